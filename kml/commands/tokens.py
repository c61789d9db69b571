"""``kml tokens create | list | revoke``: the bearer tokens the functions admit.

The tokens table holds SHA-256 digests only; ``create`` prints the new token once, and nothing
can print it again. The table is the local stack's (``<state_dir>/auth/tokens.json``) unless
``--file`` names another, e.g. the one a cluster's Secret ``kml-tokens`` is made from::

    kml tokens create --file tokens.json --name alice --scope read --scope predict
    kubectl -n kml create secret generic kml-tokens --from-file=tokens.json \\
      --dry-run=client -o yaml | kubectl apply -f -
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kafkaml.auth import SCOPES, add_token, read_table, remove_tokens
from kafkaml.errors import BadRequest, NotFound
from kml.commands.common import console, err_console, friendly_errors, load_settings
from kml.dev.access import tokens_file

app = typer.Typer(help="Bearer tokens: who may read, write, predict.", no_args_is_help=True)

FileOption = typer.Option(
    None,
    "--file",
    help="The tokens table (default: KML_AUTH_TOKENS_FILE, else the local stack's).",
)
StateDir = typer.Option(None, "--state-dir", help="Local stack state (KML_STATE_DIR).")
ScopeOption = typer.Option(..., "--scope", help=f"One of {', '.join(SCOPES)}; repeat for more.")


def table_path(file: Path | None, state_dir: str | None) -> Path:
    if file is not None:
        return file
    settings = load_settings(state_dir)
    return Path(settings.auth_tokens_file or tokens_file(settings.state_dir))


@app.command()
def create(
    name: str = typer.Option(..., "--name", help="Who holds it (shown in 403 answers and logs)."),
    scope: list[str] = ScopeOption,
    file: Path | None = FileOption,
    state_dir: str | None = StateDir,
) -> None:
    """Add a token and print it, once: keep it (the table only holds its digest)."""
    with friendly_errors():
        bad = [s for s in scope if s not in SCOPES]
        if bad:
            raise BadRequest(f"--scope {', '.join(bad)}: each must be one of {', '.join(SCOPES)}")
        if not name.strip():
            raise BadRequest("--name must not be empty")
        path = table_path(file, state_dir)
        token = add_token(path, name.strip(), scope)
        err_console.print(
            f"token {name!r} ({', '.join(dict.fromkeys(scope))}) added to {path}; "
            "it is shown only now:"
        )
        print(token)


@app.command("list")
def list_tokens(file: Path | None = FileOption, state_dir: str | None = StateDir) -> None:
    """Each token's name and scopes (never the token: the table has none)."""
    with friendly_errors():
        path = table_path(file, state_dir)
        table = Table("name", "scopes", "digest")
        for digest, entry in sorted(read_table(path).items(), key=lambda kv: kv[1]["name"]):
            table.add_row(entry["name"], ", ".join(entry["scopes"]), digest[:12])
        console.print(table)


@app.command()
def revoke(
    name: str = typer.Argument(..., help="The name given at create."),
    file: Path | None = FileOption,
    state_dir: str | None = StateDir,
) -> None:
    """Drop every token with this name; the functions refuse it within a second."""
    with friendly_errors():
        path = table_path(file, state_dir)
        dropped = remove_tokens(path, name)
        if not dropped:
            raise NotFound(f"no token named {name!r} in {path}")
        console.print(f"revoked {dropped} token(s) named {name!r} in {path}")
