"""The ``kml`` command."""

from __future__ import annotations

import typer

from kml.commands import dev
from kml.commands import inference as inference_commands
from kml.commands import registry as registry_commands
from kml.commands import streams as streams_commands
from kml.commands import tokens as tokens_commands
from kml.commands import training as training_commands

app = typer.Typer(
    help="Kafka-ML on Knative: models, training and inference over Kafka streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(registry_commands.models_app, name="models")
app.add_typer(registry_commands.configurations_app, name="configurations")
app.add_typer(registry_commands.deployments_app, name="deployments")
app.add_typer(registry_commands.inference_app, name="inference")
app.add_typer(inference_commands.deploy_app, name="deploy")
app.command("predict")(inference_commands.predict)
app.command("train")(training_commands.train)
app.add_typer(training_commands.runs_app, name="runs")
app.add_typer(training_commands.datasources_app, name="datasources")
app.add_typer(streams_commands.streams_app, name="streams")
app.add_typer(tokens_commands.app, name="tokens")
demo_app = typer.Typer(help="Demonstrations on the local stack.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("online")
def demo_online() -> None:
    """A drifting digits stream: a frozen model falls, the online stream recovers (stream.png)."""
    from kml.demo_online import online  # TensorFlow and the stack only when asked for

    online()


if __name__ == "__main__":  # pragma: no cover
    app()
