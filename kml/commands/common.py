"""What every ``kml`` sub-command shares: settings, the console, error printing."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console

from kafkaml.errors import KmlError
from kafkaml.settings import Settings
from kml.dev.stack import saved_settings

console = Console()
err_console = Console(stderr=True)


def load_settings(state_dir: str | None = None) -> Settings:
    """Environment settings, with the ports of a stack already running from ``state_dir`` and
    its tokens (the owner's token is sent with every call; ``KML_AUTH_TOKEN`` overrides it)."""
    env_settings = Settings.from_env()
    state = state_dir or env_settings.state_dir
    saved = saved_settings(state)
    keep = {k: v for k, v in saved.items() if f"KML_{k.upper()}" not in os.environ}
    for private in ("s3_secret_key", "state_dir", "auth_token"):
        keep.pop(private, None)
    from kml.dev.access import with_local_tokens
    from kml.dev.kafka_broker import with_local_scram

    return with_local_scram(with_local_tokens(env_settings.replace(**keep, state_dir=state)))


@contextmanager
def friendly_errors():
    """Print a one-line error (never a traceback or a secret) and exit non-zero."""
    from kml.dev.procs import StackError

    try:
        yield
    except (KmlError, StackError) as e:
        err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
        sys.exit(1)
