"""Batch entry for the JobSink route: ``python -m functions.train --event-file PATH``.

The event file is a structured-mode CloudEvent (JSON), as JobSink mounts it; without
``--event-file`` the path comes from ``K_EVENT_PATH``. Runs the same code as the HTTP route
without its time limit. Exit status: 0 succeeded, 1 permanent failure, 75 transient failure
(worth retrying: ``kafkaml.errors.exit_code``), 2 bad usage. A run that another attempt holds
is transient (75, retry later): the entry first waits up to one lease for a holder that died.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from functions.train.service import EVENT_TYPES, Trainer
from kafkaml.errors import EXIT_OK, EXIT_USAGE, KmlError, exit_code
from kafkaml.events import STRUCTURED_CONTENT_TYPE, parse_http
from kafkaml.settings import Settings
from kafkaml.web import configure_logging, unknown_event_type

log = logging.getLogger("kml.train")


def run(event_path: str, settings: Settings, trainer: Trainer | None = None) -> int:
    """Train from one event file; prints one JSON line (the run or the error) on stdout."""
    try:
        body = Path(event_path).read_bytes()
    except OSError as e:
        print(json.dumps({"error": f"cannot read event file {event_path}: {e.strerror}"}))
        return EXIT_USAGE
    own = trainer is None
    try:
        event = parse_http({"content-type": STRUCTURED_CONTENT_TYPE}, body)
        if event.type not in EVENT_TYPES:
            raise unknown_event_type("train", event.type, EVENT_TYPES)
        trainer = trainer or Trainer.from_settings(settings)
        run_record = trainer.handle(event, http=False)
    except KmlError as e:
        print(json.dumps(e.to_dict(), default=str))
        return exit_code(e.status)
    finally:
        if own and trainer is not None:
            _close(trainer)
    print(json.dumps(run_record, default=str))
    return EXIT_OK


def _close(trainer: Trainer) -> None:
    try:
        trainer.close()
    except KmlError as e:  # the run record is durable; only queued progress events are lost
        log.warning("results events not flushed", extra={"fields": {"reason": e.message}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m functions.train", description="Train from a CloudEvent file (JobSink)."
    )
    parser.add_argument(
        "--event-file",
        default=os.environ.get("K_EVENT_PATH"),
        help="structured CloudEvent JSON (default: $K_EVENT_PATH)",
    )
    args = parser.parse_args(argv)
    if not args.event_file:
        parser.error("--event-file or K_EVENT_PATH is required")
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return run(args.event_file, settings)


if __name__ == "__main__":
    sys.exit(main())
