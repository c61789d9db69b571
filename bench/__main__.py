"""``make bench``: run every benchmark, then regenerate the README's performance table."""

from __future__ import annotations

import importlib
import sys

from bench.readme_table import update_readme

BENCHMARKS = [
    "bench.ingest",
    "bench.train_fit",
    "bench.infer_kafka",
    "bench.infer_events",
    "bench.infer_stream",
    "bench.infer_http",
    "bench.cold_start",
    "bench.online",
]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    failed = []
    for name in names:
        module = importlib.import_module(name if name.startswith("bench.") else f"bench.{name}")
        try:
            module.main([])
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            failed.append(f"{name}: {type(e).__name__}: {e}")
    update_readme()
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
