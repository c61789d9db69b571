"""``kml streams list|show|stop``: online training streams, their windows and promotions."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from kafkaml.kafka import end_offsets
from kml.commands.common import console, friendly_errors, load_settings

streams_app = typer.Typer(
    help="Online training streams: cursor, lag, windows, promotions.", no_args_is_help=True
)


def _registry():
    from storage.registry import Registry

    settings = load_settings()
    return settings, Registry.from_settings(settings)


def lag(stream: dict[str, Any], ends: dict[int, int]) -> int:
    """Records on the topic beyond the stream's cursor (not trained yet)."""
    cursor = stream.get("cursor") or {}
    return sum(max(0, end - int(cursor.get(str(p), 0))) for p, end in ends.items())


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


@streams_app.command("list")
def list_streams() -> None:
    """Every stream: status, topic, windows, promotions, lag."""
    with friendly_errors():
        settings, registry = _registry()
        table = Table("stream", "status", "deployment", "topic", "windows", "promotions", "lag")
        for s in sorted(registry.list_streams(), key=lambda s: str(s.get("created", ""))):
            ends = end_offsets(settings.kafka, s["topic"], settings.kafka_timeout_s)
            table.add_row(
                s["id"],
                s.get("status", "-"),
                s.get("deployment_id", "-"),
                s["topic"],
                str(len(s.get("windows", []))),
                str(s.get("promotions", 0)),
                str(lag(s, ends)),
            )
        console.print(table)


@streams_app.command("show")
def show(
    stream_id: str = typer.Argument(..., help="Stream id (kml streams list)."),
    as_json: bool = typer.Option(False, "--json", help="The stream record as JSON."),
) -> None:
    """Cursor, lag, every window's metric (promoted vs candidate) and the promotions."""
    with friendly_errors():
        settings, registry = _registry()
        stream, _ = registry.get_stream(stream_id)
        if as_json:
            console.print_json(json.dumps(stream))
            return
        ends = end_offsets(settings.kafka, stream["topic"], settings.kafka_timeout_s)
        promoted = stream.get("promoted") or {}
        console.print(
            f"stream {stream_id}: [bold]{stream.get('status')}[/]  deployment "
            f"{stream.get('deployment_id')}  topic {stream['topic']}\n"
            f"  cursor {stream.get('cursor')}  lag {lag(stream, ends)}  metric "
            f"{stream.get('metric')} ({stream.get('change')}, improvement "
            f"{stream.get('improvement')})\n"
            f"  promoted {promoted.get('model', '-')} (window {promoted.get('window', '-')}), "
            f"{stream.get('promotions', 0)} promotion(s)",
            highlight=False,
        )
        if stream.get("status") == "failed":  # a window that can never train stopped it
            console.print(
                f"  [red]failed[/] at window run {stream.get('failed_run')}: "
                f"{stream.get('reason')}",
                highlight=False,
                soft_wrap=True,
            )
        table = Table("window", "records", "promoted model", "candidate", "promoted", "run")
        for w in stream.get("windows", []):
            table.add_row(
                str(w["index"]),
                str(w["records"]),
                _fmt(w.get("promoted")),
                _fmt(w.get("candidate")),
                "yes" if w.get("promote") else "",
                w["run_id"],
            )
        console.print(table)
        plot = registry.stream_plot_key(stream_id)
        if registry.store.exists(plot):  # train draws it when a window commits
            console.print(
                f"  stream.png ({stream.get('metric')} per window, frozen vs online, promotions "
                f"marked):\n    {registry.store.presigned_get(plot)}",
                highlight=False,
                soft_wrap=True,
            )


@streams_app.command("stop")
def stop(stream_id: str = typer.Argument(..., help="Stream id (kml streams list).")) -> None:
    """Stop a stream: ticks no longer train it (its windows and models stay)."""
    with friendly_errors():
        _, registry = _registry()
        stream, etag = registry.get_stream(stream_id)
        registry.update_stream(stream_id, etag, status="stopped")
        console.print(f"stream {stream_id}: stopped after {len(stream.get('windows', []))} windows")
