"""``kml dev up | down | status``: the embedded local stack."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from kml.commands.common import console, friendly_errors, load_settings
from kml.dev.access import admin_token_file, provision
from kml.dev.kafka_broker import with_scram
from kml.dev.stack import Stack

app = typer.Typer(
    help="The embedded local stack: Kafka, MinIO, the functions and the bridge.",
    no_args_is_help=True,
)

StateDir = typer.Option(None, "--state-dir", help="Where data, logs and PIDs live (KML_STATE_DIR).")


@app.command()
def up(
    state_dir: str | None = StateDir,
    kafka_scram: bool = typer.Option(
        False,
        "--kafka-scram",
        help="Kafka takes SCRAM-SHA-512 users only (a fresh stack: `kml dev down --purge` first); "
        "the functions, the bridge and the CLI connect as the local user.",
    ),
) -> None:
    """Start every part (fetching or building what is missing) and wait until each is healthy."""
    with friendly_errors():
        settings = provision(load_settings(state_dir))
        if kafka_scram:
            settings = with_scram(settings)
        started = time.monotonic()

        def report(part) -> None:
            console.print(
                f"[green]up[/]   {part.name:<10} {part.address:<28} "
                f"pid {part.proc.pid()}  ({time.monotonic() - started:.1f}s)"
            )

        Stack(settings).up(on_started=report)
        console.print(
            f"stack ready in {time.monotonic() - started:.1f}s; "
            f"state in {settings.state_dir}/ (kml dev down stops it); the CLI signs its calls "
            f"with the token in {admin_token_file(settings.state_dir)}"
        )


@app.command()
def down(
    state_dir: str | None = StateDir,
    purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data and logs."),
) -> None:
    """Stop every part; data stays for the next ``up`` unless --purge."""
    with friendly_errors():
        settings = load_settings(state_dir)
        stopped = Stack(settings).down(purge=purge)
        console.print(
            f"stopped: {', '.join(stopped) or 'nothing was running'}"
            + (f"; removed {settings.state_dir}/" if purge else "")
        )


@app.command()
def status(state_dir: str | None = StateDir) -> None:
    """Each part, its address, its PID and whether it is healthy."""
    with friendly_errors():
        table = Table("part", "address", "pid", "healthy")
        all_ok = True
        for s in Stack(load_settings(state_dir)).status():
            all_ok &= s.healthy
            table.add_row(
                s.name, s.address, str(s.pid or "-"), "[green]yes[/]" if s.healthy else "[red]no[/]"
            )
        console.print(table)
        if not all_ok:
            raise typer.Exit(1)


@app.command()
def fetch() -> None:
    """Fetch the Kafka jars (mvn) and build MinIO (go install) into the cache, if not there yet."""
    from pathlib import Path

    from kml.dev import tools

    with friendly_errors():
        settings = load_settings(None)
        started = time.monotonic()
        for name, path in tools.fetch_all(Path(settings.cache_dir)).items():
            console.print(f"{name:<6} {path}")
        console.print(f"stack parts ready in {time.monotonic() - started:.1f}s")
