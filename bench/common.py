"""What the benchmarks share: a real local stack, timing, result files and tables."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kafkaml.settings import Settings
from kml.dev.stack import Stack, infrastructure, isolated_settings

console = Console()
RESULTS = Path(__file__).parent / "results"


@contextmanager
def bench_stack(use_running: bool | None = None):
    """Settings of a real Kafka + MinIO: the running local stack (KML_BENCH_USE_RUNNING=1) or a
    fresh one on free ports in a temporary state dir, stopped afterwards."""
    if use_running is None:
        use_running = os.environ.get("KML_BENCH_USE_RUNNING") == "1"
    if use_running:
        yield Settings.from_env()
        return
    with tempfile.TemporaryDirectory(prefix="kml-bench-") as state:
        settings = isolated_settings(state, bucket="kml-bench")
        stack = Stack(settings, parts=infrastructure(settings))
        try:
            stack.up()
            yield settings
        finally:
            stack.down()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> dict[str, Any]:
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


@dataclass
class Result:
    """One benchmark's rows (each a dict) and its ratios against the baselines."""

    name: str
    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(
            json.dumps(
                {
                    "name": self.name,
                    "title": self.title,
                    "rows": self.rows,
                    "ratios": self.ratios,
                    "targets": self.targets,
                    "notes": self.notes,
                    "machine": machine(),
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
        )
        return path

    def show(self) -> None:
        if self.rows:
            table = Table(*self.rows[0].keys(), title=self.title)
            for row in self.rows:
                table.add_row(*(_fmt(v) for v in row.values()))
            console.print(table)
        for name, value in self.ratios.items():
            target = self.targets.get(name, "")
            console.print(
                f"  ratio {name}: [bold]{value:.2f}x[/] {('target ' + target) if target else ''}"
            )
        for note in self.notes:
            console.print(f"  note: {note}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
