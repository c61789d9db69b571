"""The ``kml`` command."""

from __future__ import annotations

import typer

from kafkaml.commands import dev

app = typer.Typer(help="Kafka-ML on Knative: models, training and inference over Kafka streams.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(dev.app, name="dev")

if __name__ == "__main__":  # pragma: no cover
    app()
