"""Regenerate the README's performance table from bench/results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS, machine

README = Path(__file__).parent.parent / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render() -> str:
    loaded = (json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json")))
    results = [r for r in loaded if {"title", "ratios", "rows"} <= r.keys()]  # Result files only
    m = results[0]["machine"] if results else machine()
    lines = [
        f"Measured on {m['cpus']} cores ({m['cpu']}), {m['memory_gib']} GiB, Python "
        f"{m['python']}; Kafka and MinIO on loopback on the same machine. Ratios first: "
        "they compare against a baseline in the same run, so they hold when absolute "
        "times drift on a shared machine.",
        "",
        "| benchmark | ratio | value | target |",
        "|---|---|---|---|",
    ]
    for r in results:
        for name, value in r["ratios"].items():
            lines.append(f"| {r['title']} | {name} | {value:.2f}x | {r['targets'].get(name, '')} |")
    for r in results:
        if not r["rows"]:
            continue
        cols = list(r["rows"][0].keys())
        lines += [
            "",
            f"**{r['title']}** ({r['when']})",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        lines += ["| " + " | ".join(_fmt(row[c]) for c in cols) + " |" for row in r["rows"]]
        lines += [f"- {n}" for n in r.get("notes", [])]
    lines += [
        "",
        "Reproduce: `make bench` (all, regenerates this table) or "
        "`.venv/bin/python -m bench.NAME` for one.",
    ]
    return "\n".join(lines)


def update_readme() -> None:
    text = README.read_text()
    table = f"{BEGIN}\n{render()}\n{END}"
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Performance\n\n" + table + "\n"
    README.write_text(text)


if __name__ == "__main__":
    update_readme()
