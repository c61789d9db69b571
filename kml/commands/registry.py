"""``kml models | configurations | deployments | inference``: steps A, B, C and E over HTTP.

Every command talks to the register function (``KML_REGISTER_URL``, default the local stack's)
with binary-mode CloudEvents and prints rich tables. ``kml models register --from-python``
runs a Python file HERE, on the user's machine, to build a Keras model and sends only its JSON.
"""

from __future__ import annotations

import base64
import json
import runpy
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from kafkaml.errors import BadRequest, ValidationFailed
from kafkaml.manifests import MODES, Scaling
from kafkaml.wire import FORMATS
from kml.client import RegisterClient
from kml.commands.common import console, err_console, friendly_errors, load_settings
from storage.records import COMPILE_FIELDS, Model
from storage.specs import Deployment

models_app = typer.Typer(help="Step A: register and inspect models.", no_args_is_help=True)
configurations_app = typer.Typer(
    help="Step B: group models trained together.", no_args_is_help=True
)
deployments_app = typer.Typer(
    help="Step C: deploy a configuration for training.", no_args_is_help=True
)
inference_app = typer.Typer(
    help="Step E: define an inference deployment of a trained model.", no_args_is_help=True
)

ModelFile = typer.Argument(
    ...,
    exists=True,
    dir_okay=False,
    help="FILE.json (event data or a bare model.to_json()), FILE.keras, "
    "or with --from-python a FILE.py",
)
ModelRefs = typer.Argument(..., help="Model refs: name or name@version.")
ModelOption = typer.Option(
    None, "--model", "-m", help="A model ref instead of a configuration (repeat for several)."
)
DEPLOYMENT = Deployment()
"""A deployment of nothing but defaults: the options below show the register function's."""
SCALING = Scaling()


@contextmanager
def _talking():
    """Friendly errors, plus every problem of a 422 on its own line."""
    with friendly_errors():
        try:
            yield
        except ValidationFailed as e:
            err_console.print(f"[bold red]error:[/] {e.message}", highlight=False)
            for problem in e.problems:
                err_console.print(f"  - {problem}", markup=False, highlight=False)
            sys.exit(1)


def _client() -> RegisterClient:
    return RegisterClient.from_settings(load_settings(None))


def _shape(value: Any) -> str:
    return json.dumps(value).replace("null", "None") if value is not None else "-"


def _print_record(title: str, record: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
    table = Table("field", "value", title=title, show_header=False)
    for key, value in record.items():
        if key in skip:
            continue
        shown = value if isinstance(value, str) else json.dumps(value)
        table.add_row(key, shown)
    console.print(table)


# -- models -------------------------------------------------------------------------------------
@models_app.command("register")
def models_register(
    file: Path = ModelFile,
    from_python: bool = typer.Option(
        False, "--from-python", help="Run FILE.py locally: build_model() and COMPILE."
    ),
    name: str | None = typer.Option(None, "--name", help="Model name (default: from the file)."),
    description: str | None = typer.Option(None, "--description"),
    version: int | None = typer.Option(None, "--version", help="Pin this version (409 if taken)."),
    compile_json: str | None = typer.Option(
        None,
        "--compile",
        help='Compile spec JSON, e.g. \'{"optimizer": "adam", "loss": "mse", "metrics": ["mae"]}\'',
    ),
) -> None:
    """Register a model; the answer names its version."""
    with _talking():
        if from_python:
            data = definition_from_python(file)
        elif file.suffix == ".keras":
            data = {"keras_b64": base64.b64encode(file.read_bytes()).decode()}
        else:
            data = definition_from_json(file)
        data.setdefault("name", file.stem)
        for key, value in (("name", name), ("description", description), ("version", version)):
            if value is not None:
                data[key] = value
        if compile_json is not None:
            data["compile"] = _json_option("--compile", compile_json)
        record = _client().register_model(data)
        console.print(
            f"registered [bold]{record['name']}[/] version {record['version']} "
            f"({record['param_count']} parameters, input {_shape(record['input_shape'])},"
            f" output {_shape(record['output_shape'])})"
        )


def definition_from_json(path: Path) -> dict[str, Any]:
    """Event data from a JSON file: used as is, or a bare Keras config wrapped as keras_json."""
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise BadRequest(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{path} must hold a JSON object")
    if "class_name" in data and "keras_json" not in data:
        return {"keras_json": json.dumps(data)}
    return data


def definition_from_python(path: Path) -> dict[str, Any]:
    """Run ``path`` on this machine: ``build_model()`` gives the model, ``COMPILE`` its spec."""
    scope = runpy.run_path(str(path), run_name="__kml_model__")
    build = scope.get("build_model")
    if not callable(build):
        raise BadRequest(f"{path} defines no build_model() function")
    model = build()
    spec = scope.get("COMPILE")
    if spec is None and getattr(model, "compiled", False):
        config = model.get_compile_config() or {}
        spec = {k: config[k] for k in COMPILE_FIELDS if config.get(k)}
    data: dict[str, Any] = {"keras_json": model.to_json()}
    if spec is not None:
        data["compile"] = spec
    for key in ("NAME", "DESCRIPTION"):
        if isinstance(scope.get(key), str):
            data[key.lower()] = scope[key]
    return data


@models_app.command("list")
def models_list() -> None:
    """Every model with its latest version."""
    with _talking():
        table = Table("name", "latest", "versions", "params", "input", "output", "created")
        for m in map(Model.from_dict, _client().get("/models")):
            table.add_row(
                m.name,
                str(m.version),
                ",".join(map(str, m.extra["versions"])),
                "-" if m.param_count is None else str(m.param_count),
                _shape(m.input_shape),
                _shape(m.output_shape),
                m.created or "",
            )
        console.print(table)


@models_app.command("show")
def models_show(name: str, version: int | None = typer.Option(None, "--version")) -> None:
    """One model version (latest by default) and its layers."""
    with _talking():
        path = f"/models/{name}" + (f"/{version}" if version else "")
        record = _client().get(path)
        _print_record(
            f"{record['name']}@{record['version']}", record, skip=("keras_json", "schema_version")
        )
        layers = Table("layer", "class", title="layers")
        config = json.loads(record.get("keras_json") or "{}").get("config") or {}
        for layer in config.get("layers") or []:
            layers.add_row(
                str((layer.get("config") or {}).get("name", "")), str(layer.get("class_name", ""))
            )
        console.print(layers)


# -- configurations -----------------------------------------------------------------------------
@configurations_app.command("create")
def configurations_create(
    name: str,
    models: list[str] = ModelRefs,
    description: str = typer.Option("", "--description"),
) -> None:
    """Group models trained together on one stream (versions are pinned now)."""
    with _talking():
        record = _client().create_configuration(name, models, description)
        console.print(f"configuration [bold]{record['name']}[/]: {', '.join(record['models'])}")


@configurations_app.command("list")
def configurations_list() -> None:
    with _talking():
        table = Table("name", "models", "description", "created")
        for c in _client().get("/configurations"):
            table.add_row(
                c["name"], ", ".join(c["models"]), c.get("description", ""), c.get("created", "")
            )
        console.print(table)


@configurations_app.command("show")
def configurations_show(name: str) -> None:
    with _talking():
        _print_record(f"configuration {name}", _client().get(f"/configurations/{name}"))


# -- deployments --------------------------------------------------------------------------------
@deployments_app.command("create")
def deployments_create(
    configuration: str | None = typer.Option(None, "--configuration", "-c"),
    model: list[str] | None = ModelOption,
    epochs: int = typer.Option(DEPLOYMENT.epochs, "--epochs"),
    batch_size: int = typer.Option(DEPLOYMENT.batch_size, "--batch-size"),
    shuffle: bool = typer.Option(DEPLOYMENT.shuffle, "--shuffle/--no-shuffle"),
    seed: int | None = typer.Option(None, "--seed"),
    learning_rate: float | None = typer.Option(None, "--learning-rate"),
    deployment_id: str | None = typer.Option(
        None, "--id", help="Choose the id (e.g. 7: Kafka-ML's one-byte keys address it)."
    ),
    fit_kwargs: str | None = typer.Option(
        None, "--fit-kwargs", help="JSON, e.g. '{\"validation_freq\": 2}'"
    ),
    evaluate_kwargs: str | None = typer.Option(None, "--evaluate-kwargs"),
    description: str | None = typer.Option(None, "--description"),
) -> None:
    """Deploy a configuration (or models) for training; prints the deployment id."""
    with _talking():
        record = _client().create_deployment(
            id=deployment_id,
            configuration=configuration,
            models=model or None,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            learning_rate=learning_rate,
            fit_kwargs=_json_option("--fit-kwargs", fit_kwargs),
            evaluate_kwargs=_json_option("--evaluate-kwargs", evaluate_kwargs),
            description=description,
        )
        console.print(
            f"deployment [bold]{record['id']}[/]: {', '.join(record['models'])}; "
            f"send its control message with key {record['id']!r}"
        )


@deployments_app.command("list")
def deployments_list() -> None:
    with _talking():
        table = Table("id", "configuration", "models", "epochs", "batch", "created")
        for d in map(Deployment.from_dict, _client().get("/deployments")):
            table.add_row(
                d.id,
                d.configuration or "-",
                ", ".join(d.models),
                str(d.epochs),
                str(d.batch_size),
                d.created or "",
            )
        console.print(table)


@deployments_app.command("show")
def deployments_show(deployment_id: str) -> None:
    with _talking():
        _print_record(f"deployment {deployment_id}", _client().get(f"/deployments/{deployment_id}"))


# -- inference ----------------------------------------------------------------------------------
@inference_app.command("create")
def inference_create(
    run_id: str | None = typer.Option(None, "--run", help="A succeeded training run to pin."),
    stream: str | None = typer.Option(
        None,
        "--stream",
        help="An online stream to follow instead of --run: serves its promoted model and "
        "switches to each new promotion by itself.",
    ),
    input_topic: str = typer.Option(..., "--input-topic"),
    output_topic: str = typer.Option(..., "--output-topic"),
    model: str | None = typer.Option(None, "--model", help="Default: the run's only model."),
    inference_id: str | None = typer.Option(None, "--id"),
    input_format: str | None = typer.Option(
        None, "--input-format", help=f"{', '.join(FORMATS)} (default: the run's)."
    ),
    input_config: str | None = typer.Option(None, "--input-config", help="JSON object."),
    min_scale: int | None = typer.Option(
        None, "--min-scale", help=f"Replicas when idle (default {SCALING.min_scale})."
    ),
    max_scale: int | None = typer.Option(
        None, "--max-scale", help=f"Most replicas (default {SCALING.max_scale})."
    ),
    target_concurrency: int | None = typer.Option(
        None,
        "--target-concurrency",
        help=f"Requests in flight per replica (default {SCALING.target_concurrency}).",
    ),
    image: str | None = typer.Option(
        None, "--image", help="One of the images the operator allows (KML_INFER_IMAGES)."
    ),
    public: bool = typer.Option(
        False, "--public", help="Give the Service a route outside the cluster (default: none)."
    ),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help=f"{' or '.join(MODES)}: a Knative Service fed one record per request (default), "
        "or batched consumers in a Deployment scaled on consumer lag by KEDA.",
    ),
    show_yaml: bool = typer.Option(False, "--yaml", help="Print the rendered manifests."),
) -> None:
    """Store an inference spec and render its manifests (Knative Service + KafkaSource, or in
    stream mode a Deployment + KEDA ScaledObject)."""
    with _talking():
        record = _client().create_inference(
            id=inference_id,
            run_id=run_id,
            stream=stream,
            model=model,
            input_format=input_format,
            input_config=_json_option("--input-config", input_config),
            input_topic=input_topic,
            output_topic=output_topic,
            min_scale=min_scale,
            max_scale=max_scale,
            target_concurrency=target_concurrency,
            image=image,
            public=True if public else None,
            mode=mode,
        )
        from kml.commands.inference import create_topics_if_reachable

        topics = create_topics_if_reachable(load_settings(None), record)
        if show_yaml:
            err_console.print(topics, highlight=False, markup=False)
            print(record["manifests"], end="")
            return
        console.print(topics, highlight=False, markup=False)
        follows = f" (following stream {record['stream']})" if record.get("stream") else ""
        console.print(
            f"inference [bold]{record['id']}[/]: {record['input_topic']} -> "
            f"{record['model']}{follows} -> {record['output_topic']}; "
            f"`kml deploy inference {record['id']}` prints or applies it"
        )


def _json_option(option: str, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as e:
        raise BadRequest(f"{option} is not JSON: {e}") from None
