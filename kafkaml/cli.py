"""The ``kml`` command."""

from __future__ import annotations

import typer

from kafkaml.commands import dev
from kafkaml.commands import inference as inference_commands

app = typer.Typer(help="Kafka-ML on Knative: models, training and inference over Kafka streams.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(dev.app, name="dev")
app.add_typer(inference_commands.deploy_app, name="deploy")
app.command("predict")(inference_commands.predict)

if __name__ == "__main__":  # pragma: no cover
    app()
