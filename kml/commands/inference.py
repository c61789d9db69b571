"""``kml deploy inference ID [--apply | --local]`` and ``kml predict ID``."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import typer

from kafkaml.errors import BadRequest, KmlError, NotFound, Unavailable
from kafkaml.settings import Settings
from kml.commands.common import console, friendly_errors, load_settings

deploy_app = typer.Typer(help="Deploy a trained model for inference.", no_args_is_help=True)

StateDir = typer.Option(None, "--state-dir", help="Local stack state (KML_STATE_DIR).")
DataFile = typer.Option(
    None, "--data", help='A JSON file: {"instances": [...]} or a bare list of instances.'
)


class KubectlFailed(KmlError):
    status, kind = 502, "kubectl_failed"


@deploy_app.command("inference")
def deploy_inference(
    inference_id: str = typer.Argument(..., help="The inference deployment's id."),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Render the stored spec with this machine's settings, check it, and pipe it to "
        "`kubectl apply -f -` (never the YAML stored in S3).",
    ),
    local: bool = typer.Option(
        False,
        "--local",
        help="Serve it as a local process instead, wired to the local stack's KafkaSource bridge "
        "(stream mode: its consumer loop, which reads Kafka itself).",
    ),
    state_dir: str | None = StateDir,
) -> None:
    """Print the deployment's manifests (rendered from its stored spec, checked), apply them,
    or run it locally."""
    with friendly_errors():
        settings = load_settings(state_dir)
        if local:
            from kml.dev.inference import bridge_running, is_stream, start_local_inference

            url, pid = start_local_inference(settings, inference_id)
            if not is_stream(settings, inference_id) and not bridge_running(settings):
                console.print(
                    "the local KafkaSource bridge is not running (kml dev up starts it): records "
                    "on the input topic wait for it, none is skipped"
                )
            if is_stream(settings, inference_id):
                console.print(
                    f"inference {inference_id} streaming (pid {pid}): it reads its input topic "
                    f"in batches; metrics at {url}/metrics"
                )
                return
            console.print(
                f"inference {inference_id} serving at {url} (pid {pid}); "
                f"kml predict {inference_id} --instances '[...]' calls it"
            )
            return
        yaml_text = manifests_yaml(settings, inference_id)
        if apply:
            console.print(kubectl_apply(yaml_text), highlight=False, markup=False)
        else:
            print(yaml_text, end="" if yaml_text.endswith("\n") else "\n")


def create_topics_if_reachable(
    settings: Settings, record: dict[str, Any], timeout_s: float = 5.0
) -> str:
    """Create an inference deployment's topics on the configured Kafka when it answers; a line
    saying what was done, or why not (deploying creates them, or their KafkaTopics do)."""
    from kml.dev.inference import ensure_topics

    try:
        topics = ensure_topics(settings, record, timeout_s=timeout_s)
    except Exception as e:  # unreachable, or refused: creating the deployment still worked
        reason = e.message if isinstance(e, KmlError) else type(e).__name__
        return (
            f"topics not created now ({reason}); `kml deploy inference --local` creates them, "
            "and on a cluster their KafkaTopics (KML_STRIMZI_CLUSTER) or your Kafka admin must"
        )
    return f"topics ready on {settings.kafka_bootstrap}: {', '.join(topics)}"


def manifests_yaml(settings: Settings, inference_id: str) -> str:
    """The deployment's manifests rendered again from its stored spec with these settings (their
    namespace, Kafka and allowed images), the spec checked as register checks a new one and the
    objects against the schemas and rules: the YAML register stored is never applied, so
    whoever can write to S3 cannot choose what ``kubectl`` creates."""
    from kafkaml.errors import ValidationFailed
    from kafkaml.manifests import render_inference_manifests, to_yaml
    from kml.manifests_check import check_rendered, crd_schema_dir, load_crd_schemas
    from storage.registry import Registry
    from storage.specs import InferenceSpec

    spec = Registry.from_settings(settings).get_inference(inference_id)
    given = {k: v for k, v in spec.items() if k in InferenceSpec.input_fields()}
    problems = InferenceSpec.stored_problems(given, settings)
    if problems:
        raise ValidationFailed(
            f"stored inference spec {inference_id} refused: {'; '.join(problems)}", problems
        )
    docs = render_inference_manifests(spec, settings)
    directory = crd_schema_dir()
    crds = load_crd_schemas(directory) if any(directory.glob("*.yaml")) else {}
    problems = check_rendered(docs, crds)
    if problems:
        raise ValidationFailed(
            f"manifests of inference {inference_id} are invalid: {'; '.join(problems)}", problems
        )
    return to_yaml(docs)


def kubectl_apply(yaml_text: str, kubectl: str = "kubectl") -> str:
    """``kubectl apply -f -`` with the YAML on stdin; its output, or an error naming the cause."""
    exe = shutil.which(kubectl)
    if exe is None:
        raise KubectlFailed(
            f"{kubectl} is not on PATH: install it (and point it at your "
            "cluster), or run without --apply and apply the printed YAML yourself"
        )
    done = subprocess.run(
        [exe, "apply", "-f", "-"], input=yaml_text, text=True, capture_output=True, timeout=120
    )
    if done.returncode != 0:
        raise KubectlFailed(
            f"kubectl apply failed (exit {done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout.strip()


def predict(
    inference_id: str = typer.Argument(..., help="The inference deployment's id."),
    data: Path | None = DataFile,
    instances: str | None = typer.Option(None, "--instances", help="The instances as JSON."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="The service's URL (default: the local "
        "process started by `kml deploy inference --local`).",
    ),
    event: bool = typer.Option(
        False,
        "--event",
        help="Send a kml.inference.request CloudEvent instead of a KServe V1 request.",
    ),
    state_dir: str | None = StateDir,
) -> None:
    """Predict over HTTP and print the predictions as JSON."""
    with friendly_errors():
        settings = load_settings(state_dir)
        body = {"instances": read_instances(data, instances)}
        target = url or local_url(settings, inference_id)
        answer = call_predict(target, inference_id, body, event=event, token=settings.auth_token)
        print(json.dumps(answer))


def read_instances(data: Path | None, instances: str | None) -> list[Any]:
    if (data is None) == (instances is None):
        raise BadRequest("give exactly one of --data FILE.json or --instances '[...]'")
    try:
        raw = json.loads(data.read_text() if data is not None else instances or "")
    except FileNotFoundError:
        raise BadRequest(f"no file {data}") from None
    except ValueError as e:
        raise BadRequest(f"the instances are not JSON: {e}") from None
    found = raw.get("instances") if isinstance(raw, dict) else raw
    if not isinstance(found, list) or not found:
        raise BadRequest('instances must be a non-empty JSON list (or {"instances": [...]})')
    return found


def local_url(settings: Settings, inference_id: str) -> str:
    from kml.dev.inference import home_of

    try:
        return (home_of(settings, inference_id) / "url").read_text().strip()
    except FileNotFoundError:
        raise NotFound(
            f"inference {inference_id} is not running locally: start it with "
            f"`kml deploy inference {inference_id} --local` or pass --url"
        ) from None


def call_predict(
    url: str,
    inference_id: str,
    body: dict[str, Any],
    event: bool = False,
    timeout_s: float = 60.0,
    token: str = "",
) -> dict[str, Any]:
    """POST to the infer function (KServe V1, or a CloudEvent) with ``token`` (scope
    ``predict``); the answer's JSON."""
    import requests

    if event:
        target = url.rstrip("/") + "/"
        headers = {
            "ce-specversion": "1.0",
            "ce-type": "kml.inference.request",
            "ce-source": "/kml/cli",
            "ce-id": str(uuid.uuid4()),
            "content-type": "application/json",
        }
    else:
        target = f"{url.rstrip('/')}/v1/models/{inference_id}:predict"
        headers = {"content-type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        r = requests.post(target, data=json.dumps(body), headers=headers, timeout=timeout_s)
    except requests.RequestException as e:
        raise Unavailable(f"{url} does not answer: {type(e).__name__}") from None
    try:
        answer = r.json()
    except ValueError:
        answer = {"error": r.text[:200]}
    if r.status_code >= 400:
        raise KmlError(
            f"{answer.get('error', 'request failed')}"
            + (f": {'; '.join(answer['problems'])}" if answer.get("problems") else ""),
            status=r.status_code,
        )
    return answer
