"""``kml train``, ``kml runs show | retry``, ``kml datasources reuse``: training by command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kafkaml.errors import BadRequest
from kafkaml.kafka import ConfirmingProducer, end_offsets, ensure_topic, follow
from kafkaml.settings import Settings
from kafkaml.sink import JsonSink, KafkaMLSink, RawSink
from kafkaml.wire import (
    ControlMessage,
    control_message_key,
    parse_control_message,
    to_control_message_bytes,
)
from kml.commands.common import console, err_console, friendly_errors, load_settings
from storage.records import Datasource, Run

runs_app = typer.Typer(help="Training runs: status, metrics and artifacts.", no_args_is_help=True)
datasources_app = typer.Typer(help="Stored control messages (data streams).", no_args_is_help=True)


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels from ``.npz`` (x/y, data/labels or the first two arrays) or CSV."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            for x_name, y_name in (("x", "y"), ("data", "labels"), ("features", "labels")):
                if x_name in names and y_name in names:
                    return npz[x_name], npz[y_name]
            if len(names) < 2:
                raise BadRequest(f"{path}: needs two arrays (features and labels)")
            return npz[names[0]], npz[names[1]]
    if path.suffix == ".csv":
        text = path.read_text().splitlines()
        skip = 0 if text and _numeric_row(text[0]) else 1
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
        x, y = table[:, :-1].astype(np.float32), table[:, -1]
        return x, (y.astype(np.int64) if np.all(y == np.round(y)) else y.astype(np.float32))
    raise BadRequest(f"{path}: use a .npz or .csv file (CSV: the last column is the label)")


def _numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def _sink(
    fmt: str,
    settings: Settings,
    topic: str,
    deployment: str,
    x: np.ndarray,
    y: np.ndarray,
    validation_rate: float,
    test_rate: float,
    kafka_ml_key: bool,
) -> KafkaMLSink:
    shape = " ".join(str(d) for d in x.shape[1:]) or None
    label_shape = " ".join(str(d) for d in y.shape[1:]) or "1"
    args = dict(
        validation_rate=validation_rate,
        test_rate=test_rate,
        control_topic=settings.control_topic,
        kafka_ml_key=kafka_ml_key,
        timeout_s=settings.kafka_timeout_s,
        data_reshape=shape,
        label_reshape=label_shape,
        description=f"kml train {topic}",
    )
    if fmt == "RAW":
        return RawSink(
            settings.kafka,
            topic,
            deployment,
            data_type=x.dtype.name,
            label_type=y.dtype.name,
            **args,
        )
    if fmt == "JSON":
        return JsonSink(
            settings.kafka,
            topic,
            deployment,
            data_type=x.dtype.name,
            label_type=y.dtype.name,
            **args,
        )
    raise BadRequest(f"--format {fmt}: kml train sends RAW or JSON (use AvroSink for AVRO)")


def follow_run(settings: Settings, run_id: str, start: dict[int, int], timeout_s: float) -> bool:
    """Show progress events of ``run_id`` until completed (True) or failed (False)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, int] = {}
        waiting = progress.add_task(f"waiting for run {run_id}", total=None, info="")
        for msg in follow(settings.kafka, settings.results_topic, start, timeout_s):
            try:
                event = json.loads(msg.value())
            except ValueError:
                continue
            data = event.get("data") or {}
            if data.get("run_id") != run_id:
                continue
            kind = event.get("type", "")
            if kind.endswith(".progress"):
                model = data.get("model", "?")
                if model not in tasks:
                    progress.update(waiting, visible=False)
                    tasks[model] = progress.add_task(model, total=data.get("epochs"), info="")
                info = "  ".join(f"{k} {v:.4f}" for k, v in (data.get("metrics") or {}).items())
                progress.update(tasks[model], completed=data.get("epoch"), info=info)
            elif kind.endswith(".completed"):
                progress.update(waiting, visible=False)
                return True
            elif kind.endswith(".failed") and data.get("permanent") is False:
                # transient: the control message is delivered again and the run retried
                progress.update(waiting, description=f"run {run_id}: retrying", visible=True)
                err_console.print(f"run {run_id}: attempt failed, retried: {data.get('reason')}")
            elif kind.endswith(".failed"):
                err_console.print(f"[bold red]run {run_id} failed:[/] {data.get('reason')}")
                return False
    err_console.print(f"no news of run {run_id} for {timeout_s:g}s; see `kml runs show {run_id}`")
    return False


DataFile = typer.Option(
    ...,
    "--data",
    exists=True,
    dir_okay=False,
    help="Training data: .npz (x, y) or .csv (last column = label).",
)


def train(
    deployment: str = typer.Option(..., "--deployment", "-d", help="Deployment id to train."),
    data: Path = DataFile,
    topic: str = typer.Option(..., "--topic", "-t", help="Kafka topic for the data records."),
    fmt: str = typer.Option("RAW", "--format", help="Record format: RAW or JSON."),
    validation_rate: float = typer.Option(0.1, help="Fraction held out for validation."),
    test_rate: float = typer.Option(0.1, help="Fraction held out for the test metrics."),
    partitions: int = typer.Option(3, help="Partitions when the topic is created."),
    kafka_ml_key: bool = typer.Option(False, help="Write Kafka-ML's one-byte key (ids 0..255)."),
    follow_run_: bool = typer.Option(True, "--follow/--no-follow", help="Wait for the run."),
    timeout: float = typer.Option(900, help="Give up following after this many idle seconds."),
    online: bool = typer.Option(
        False, "--online", help="Start an online stream on the topic (Kafka-ML's incremental)."
    ),
    window_records: int | None = typer.Option(None, help="Online: at most this many per window."),
    stream_timeout: int = typer.Option(
        60000, help="Online: close after this many ms without data (-1: indefinite)."
    ),
    metric: str = typer.Option("val_loss", help="Online: the monitored metric."),
    change: str = typer.Option("down", help="Online: better is 'up' or 'down'."),
    improvement: float = typer.Option(0.05, help="Online: promote when better by this much."),
    indefinite: bool = typer.Option(False, help="Online: keep the stream open for good."),
) -> None:
    """Publish data and its control message, then follow the run until it completes or fails.

    With ``--online``: the control message first, as Kafka-ML's ``OnlineRawSink`` writes it
    (bare topic, ``incremental``, no total), then the data; the stream's windows train on
    every tick from then on (``kml streams list``)."""
    with friendly_errors():
        settings = load_settings()
        x, y = load_data(data)
        ensure_topic(settings.kafka, topic, partitions, settings.kafka_timeout_s)
        if online:
            policy = {
                "stream_timeout": stream_timeout,
                "monitoring_metric": metric,
                "change": change,
                "improvement": improvement,
                "indefinite": indefinite,
                "window_records": window_records,
            }
            sink = _sink(
                fmt.upper(), settings, topic, deployment, x, y, validation_rate, test_rate, False
            )
            start_online(settings, sink, policy, kafka_ml_key)
            sink.send_batch(x, y)
            sink.flush()  # the data only: the stream's control message went first
            console.print(
                f"online stream for deployment {deployment} on {topic}: control message on "
                f"{settings.control_topic}, then {len(x)} records; see `kml streams list`"
            )
            return
        ensure_topic(settings.kafka, settings.results_topic, 1, settings.kafka_timeout_s)
        start = end_offsets(settings.kafka, settings.results_topic)
        sink = _sink(
            fmt.upper(), settings, topic, deployment, x, y, validation_rate, test_rate, kafka_ml_key
        )
        sink.send_batch(x, y)
        control = sink.close()
        run_id = control.run_id()
        console.print(
            f"sent {control.total_msg} records to {control.topic}; control message on "
            f"{settings.control_topic}; run {run_id}"
        )
        if follow_run_ and not follow_run(settings, run_id, start, timeout):
            raise typer.Exit(1)
        if follow_run_:
            show(run_id)


def start_online(
    settings: Settings, sink: KafkaMLSink, policy: dict, kafka_ml_key: bool
) -> ControlMessage:
    """Write the online control message of ``sink``'s topic and format, checked first (every
    bad field named, nothing sent) and confirmed before any data follows."""
    body = {
        "topic": sink.topic,
        "input_format": sink.input_format,
        "description": sink.description,
        "input_config": dict(sink.input_config),
        "validation_rate": sink.validation_rate,
        "test_rate": sink.test_rate,
        "total_msg": None,
        "unsupervised_topic": None,
        "dataset_restrictions": {},
        "incremental": True,
        **policy,
    }
    value = json.dumps(body).encode("utf-8")
    key = control_message_key(sink.deployment_id, kafka_ml_key)
    message = parse_control_message(value, key)
    producer = ConfirmingProducer(settings.kafka, settings.kafka_timeout_s)
    producer.produce(settings.control_topic, value, key)
    producer.flush()
    return message


@runs_app.command("show")
def show(run_id: str = typer.Argument(..., help="Run id (printed by kml train).")) -> None:
    """Status, metrics and artifact locations (presigned URLs) of a run."""
    from storage.registry import Registry

    with friendly_errors():
        registry = Registry.from_settings(load_settings())
        run = Run.from_dict(registry.get_run(run_id)[0])
        console.print(
            f"run {run_id}: [bold]{run.status}[/]  deployment "
            f"{run.deployment_id}  splits {run.extra.get('splits', '-')}"
        )
        if run.reason:
            console.print(f"reason: {run.reason}")
        for name, result in run.models.items():
            metrics = result.get("metrics", {})
            scores = metrics.get("test") or metrics.get("evaluated_on_validation") or {}
            console.print(
                f"\n[bold]{name}[/] ({result.get('model')}): "
                + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
            )
            if result.get("tflite_error"):
                console.print(f"tflite: {result['tflite_error']}")
            for filename, key in sorted(result.get("artifacts", {}).items()):
                console.print(
                    f"  {filename:<22} s3://{registry.store.bucket}/{key}",
                    soft_wrap=True,
                    highlight=False,
                )
                console.print(
                    f"    {registry.store.presigned_get(key)}",
                    soft_wrap=True,
                    highlight=False,
                    markup=False,
                )


@runs_app.command("retry")
def retry(
    run_id: str = typer.Argument(..., help="A failed run (or one whose attempt died)."),
    kafka_ml_key: bool = typer.Option(False, help="Write Kafka-ML's one-byte key."),
) -> None:
    """Train a failed run again: make it retryable and publish its control message once more.

    For a run that failed permanently (bad data fixed since, a deployment created late) or
    transiently, and for one whose attempt died (its lease lapsed) after the deliveries ran
    out. The run keeps its id and its history (``retries``: who asked, when, the reason it had
    failed with); the next attempt is ``attempt + 1``. A run that succeeded, or that a live
    attempt holds, is left alone.
    """
    import time

    from storage.registry import Registry

    with friendly_errors():
        settings = load_settings()
        registry = Registry.from_settings(settings)
        run = Run.from_dict(registry.get_run(run_id)[0])
        lease = float(run.extra.get("lease_expires") or 0)
        if run.status == "succeeded":
            raise BadRequest(f"run {run_id} succeeded: nothing to retry")
        if run.status in ("claimed", "running") and lease > time.time():
            raise BadRequest(
                f"run {run_id} is {run.status}: attempt {run.extra.get('attempt', 1)} holds it "
                f"for {lease - time.time():.0f}s more (retry once it failed or its lease lapsed)"
            )
        stored = Datasource.from_dict(registry.get_datasource(run.datasource_id or ""))
        message = parse_control_message(
            json.dumps(stored.control_message).encode(), None, deployment_id=run.deployment_id
        )
        if message.run_id() != run_id:
            raise BadRequest(
                f"run {run_id}: its stored control message now defines run {message.run_id()} "
                "(a run made before run ids covered input format, config and rates); send it "
                f"again with `kml datasources reuse {stored.id} -d {run.deployment_id}`"
            )
        reason = run.reason
        if run.status == "failed":
            registry.reopen_run(run_id, requested_by="kml runs retry")
        republish(settings, stored.control_message, run.deployment_id or "", kafka_ml_key)
        console.print(
            f"run {run_id}: control message published again on {settings.control_topic}"
            + (f" (it had failed: {reason})" if reason else "")
        )


@datasources_app.command("reuse")
def reuse(
    datasource_id: str = typer.Argument(..., help="Datasource id (a stored control message)."),
    deployment: str = typer.Option(..., "--deployment", "-d", help="Deployment to train."),
    kafka_ml_key: bool = typer.Option(False, help="Write Kafka-ML's one-byte key."),
) -> None:
    """Re-publish a stored control message under another deployment (data stream reuse)."""
    from storage.registry import Registry

    with friendly_errors():
        settings = load_settings()
        stored = Datasource.from_dict(
            Registry.from_settings(settings).get_datasource(datasource_id)
        )
        message = republish(settings, stored.control_message, deployment, kafka_ml_key)
        console.print(
            f"control message for deployment {deployment} on {settings.control_topic}"
            f"; run {message.run_id()}"
        )


def republish(
    settings: Settings, body: dict, deployment: str, kafka_ml_key: bool = False
) -> ControlMessage:
    """Validate and publish a control message body keyed by ``deployment``; waits for Kafka."""
    message = parse_control_message(json.dumps(body).encode(), None, deployment_id=deployment)
    producer = ConfirmingProducer(settings.kafka, settings.kafka_timeout_s)
    producer.produce(
        settings.control_topic,
        to_control_message_bytes(message),
        control_message_key(deployment, kafka_ml_key),
    )
    producer.flush()
    return message
