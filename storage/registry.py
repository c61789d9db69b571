"""The registry records, kept as JSON objects in one bucket (the layout below).

Creates are conditional (``If-None-Match: *``) and updates carry ``If-Match: <etag>``: a lost
race raises ``Conflict`` (409), nothing is ever silently overwritten. Every record has
``schema_version`` (1) and ``created`` (UTC RFC 3339). Names and ids are single key segments
(letters, digits, ``.``, ``_``, ``-``). Records:

model (``models/<name>/<version>/model.json``, immutable)
    name, version (int from 1), description, format (``keras_json`` | ``keras_file``),
    keras_json (str: exactly what ``model.to_json()`` gives; ``keras.models.model_from_json``),
    keras_file (S3 key of the ``.keras`` upload when format is ``keras_file``, else absent),
    compile ({optimizer, loss, metrics}; optimizer a name or a Keras optimizer config),
    param_count, input_shape, output_shape (lists, ``None`` for the batch axis; lists of
    lists when the model has several inputs / outputs), keras_version.
configuration (``configurations/<name>.json``, immutable)
    name, description, requested (refs as given), models (refs pinned to ``name@version``).
deployment (``deployments/<id>.json``, immutable)
    id (str; ``"7"`` style ids address Kafka-ML's one-byte keys), configuration (name or None),
    models (pinned ``name@version`` refs), batch_size, epochs, shuffle, seed,
    learning_rate (or None), fit_kwargs, evaluate_kwargs, description.
datasource (``datasources/<id>.json``, immutable)
    whatever the train function keeps of an accepted control message (free form).
run (``runs/<run-id>/status.json``; claimed -> running -> succeeded | failed)
    run_id, deployment_id, datasource_id, status, reason, permanent (bool), models
    ({name: {metrics, artifacts}}), created, updated; extra fields are kept (the train function
    keeps attempt, lease_expires, ...). A failed run that is not ``permanent`` may be claimed
    again (a redelivery retries it), and so may a claimed or running one whose lease lapsed;
    :meth:`Registry.reopen_run` makes a failed run retryable again (``kml runs retry``).
inference (``inference/<id>.json``, manifests at ``inference/<id>.yaml``)
    id, run_id, model, input_format (RAW | AVRO | JSON), input_config, input_topic,
    output_topic, min_scale, max_scale, target_concurrency, created; image when chosen;
    stream when it follows an online stream (run_id is then the run promoted at creation).
event (``events/<sha256(source, id)>.json``)
    source, id, type, state, expires, answer. Claimed with a conditional create BEFORE the
    event is handled (state ``pending`` until ``expires``), then ``done`` with the answer: the
    record the create produced, so that a redelivered event (KafkaSource delivers at least once)
    gets the same answer instead of a second version, even while the first delivery is still
    being handled. A failed handling sets ``released``; a released claim, or a pending one whose
    handler died (``expires`` passed), is taken over by the next delivery (If-Match).
"""

from __future__ import annotations

import uuid
from typing import Any

from kafkaml.errors import Conflict, NotFound, ValidationFailed
from kafkaml.parsing import is_digits
from storage.delivered import EVENT_DONE, EVENT_PENDING, EVENT_RELEASED, EventRecords, event_state
from storage.objects import ObjectStore, PreconditionFailed
from storage.records import ModelRef, check_name, same_content, stamped
from storage.runs import RunRecords
from storage.specs import Deployment, InferenceSpec

__all__ = ["EVENT_DONE", "EVENT_PENDING", "EVENT_RELEASED", "Registry", "event_state"]

_CREATE_ATTEMPTS = 20


class Registry(RunRecords, EventRecords):
    """Models, configurations, deployments, datasources, runs, streams, inference specs and
    delivered events (runs and streams in ``storage.runs``, events in ``storage.delivered``)."""

    @classmethod
    def from_settings(cls, settings) -> Registry:
        return cls(ObjectStore.from_settings(settings))

    def ensure_ready(self) -> None:
        """Create the bucket if missing; ``Unavailable`` when storage does not answer."""
        self._store.ensure_bucket()

    # -- models -------------------------------------------------------------------------------
    def register_model(
        self, name: str, definition: dict[str, Any], keras_file: bytes | None = None
    ) -> dict[str, Any]:
        """Store a new immutable version; ``definition['version']`` pins it (409 if it exists)."""
        check_name("name", name)
        body = {k: v for k, v in definition.items() if k not in ("name", "version")}
        if keras_file is None:
            return self._register_version(name, body, definition.get("version"))
        key = f"models/{name}/files/{uuid.uuid4().hex}.keras"
        self._store.put(key, keras_file, content_type="application/octet-stream")
        body.update(format="keras_file", keras_file=key)
        try:
            return self._register_version(name, body, definition.get("version"))
        except Conflict:
            self._store.delete(key)  # no record points at it
            raise

    def _register_version(self, name: str, body: dict[str, Any], wanted: Any) -> dict[str, Any]:
        if wanted is not None:
            if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
                raise ValidationFailed(
                    "invalid version", [f"version: {wanted!r} must be a positive integer"]
                )
            record = stamped(body, name=name, version=wanted)
            try:
                self._store.put_json(self._model_key(name, wanted), record, if_none_match=True)
            except PreconditionFailed:
                raise Conflict(
                    f"model {name} version {wanted} already exists", model=name, version=wanted
                ) from None
            return record
        for _ in range(_CREATE_ATTEMPTS):
            version = max(self.list_model_versions(name), default=0) + 1
            record = stamped(body, name=name, version=version)
            try:
                self._store.put_json(self._model_key(name, version), record, if_none_match=True)
                return record
            except PreconditionFailed:
                continue  # another writer took this version; take the next one
        raise Conflict(f"model {name}: too many concurrent registrations, try again", model=name)

    def get_model(self, name: str, version: int | None = None) -> dict[str, Any]:
        """One version, or the latest when ``version`` is None."""
        check_name("model", name)
        if version is None:
            versions = self.list_model_versions(name)
            if not versions:
                raise NotFound(f"no model {name!r}", model=name)
            version = versions[-1]
        try:
            return self._read(self._model_key(name, version))
        except NotFound:
            raise NotFound(f"no model {name}@{version}", model=name, version=version) from None

    def get_model_ref(self, ref: str | ModelRef) -> dict[str, Any]:
        r = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
        return self.get_model(r.name, r.version)

    def list_model_versions(self, name: str) -> list[int]:
        check_name("model", name)
        dirs = self._store.list_dirs(f"models/{name}/")
        return sorted(int(d) for d in dirs if is_digits(d))

    def list_models(self) -> list[dict[str, Any]]:
        """The latest record of every model, with ``versions`` (all its version numbers)."""
        out = []
        for name in self._store.list_dirs("models/"):
            versions = self.list_model_versions(name)
            if versions:
                latest = self._read(self._model_key(name, versions[-1]))
                out.append({**latest, "versions": versions})
        return out

    def pin_refs(self, refs: list[Any]) -> list[str]:
        """``name``/``name@version`` refs as ``name@version``; every unknown one in one 422."""
        pinned, problems = [], []
        for ref in refs:
            try:
                parsed = ModelRef.parse(ref)
                pinned.append(f"{parsed.name}@{self.get_model_ref(parsed)['version']}")
            except NotFound:
                problems.append(f"models: no model {ref!r}")
            except ValidationFailed as e:
                problems.extend(e.problems)
        if problems:
            raise ValidationFailed("unknown or invalid model refs", problems)
        return pinned

    # -- configurations -----------------------------------------------------------------------
    def create_configuration(self, record: dict[str, Any]) -> dict[str, Any]:
        name = check_name("name", record.get("name"))
        refs = list(record.get("models") or [])
        if not refs:
            raise ValidationFailed("a configuration needs models", ["models: must not be empty"])
        out = stamped(record, requested=refs, models=self.pin_refs(refs))
        self._create(f"configurations/{name}.json", out, f"configuration {name!r}")
        return out

    def get_configuration(self, name: str) -> dict[str, Any]:
        check_name("configuration", name)
        return self._read(f"configurations/{name}.json", f"no configuration {name!r}")

    def list_configurations(self) -> list[dict[str, Any]]:
        return self._read_all("configurations/")

    # -- deployments --------------------------------------------------------------------------
    def create_deployment(self, record: dict[str, Any]) -> dict[str, Any]:
        """Pin the models; ``id`` chosen by the user or the next free small integer."""
        record = Deployment.from_dict(record).to_dict()  # the defaults, for what is not given
        config = record.get("configuration")
        if config is not None:
            refs = self.get_configuration(config)["models"]
        else:
            refs = self.pin_refs(list(record.get("models") or []))
        if not refs:
            raise ValidationFailed(
                "a deployment needs models", ["configuration or models: one is required"]
            )
        wanted = record.get("id")
        if wanted is not None:
            check_name("id", wanted)
            out = stamped(record, id=wanted, models=refs, configuration=config)
            self._create(f"deployments/{wanted}.json", out, f"deployment {wanted!r}")
            return out
        for _ in range(_CREATE_ATTEMPTS):
            taken = [
                int(k[12:-5])
                for k in self._store.list("deployments/")
                if k.endswith(".json") and is_digits(k[12:-5])
            ]
            new_id = str(max(taken, default=0) + 1)
            out = stamped(record, id=new_id, models=refs, configuration=config)
            try:
                self._store.put_json(f"deployments/{new_id}.json", out, if_none_match=True)
                return out
            except PreconditionFailed:
                continue
        raise Conflict("too many concurrent deployment creations, try again")

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        check_name("deployment id", deployment_id)
        return self._read(f"deployments/{deployment_id}.json", f"no deployment {deployment_id!r}")

    def list_deployments(self) -> list[dict[str, Any]]:
        return self._read_all("deployments/")

    def resolve_models(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The full model records a deployment trains, in its order."""
        refs = deployment.get("models")
        if not refs and deployment.get("configuration"):
            refs = self.get_configuration(deployment["configuration"])["models"]
        return [self.get_model_ref(ref) for ref in refs or []]

    # -- datasources --------------------------------------------------------------------------
    def put_datasource(self, datasource_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Create if absent; the same content again returns the stored one; other content 409."""
        check_name("datasource id", datasource_id)
        key = f"datasources/{datasource_id}.json"
        out = stamped(record, id=datasource_id)
        try:
            self._store.put_json(key, out, if_none_match=True)
            return out
        except PreconditionFailed:
            existing = self._read(key)
            if same_content(existing, out):
                return existing
            raise Conflict(
                f"datasource {datasource_id!r} exists with other content",
                datasource_id=datasource_id,
            ) from None

    def get_datasource(self, datasource_id: str) -> dict[str, Any]:
        check_name("datasource id", datasource_id)
        return self._read(f"datasources/{datasource_id}.json", f"no datasource {datasource_id!r}")

    def list_datasources(self) -> list[dict[str, Any]]:
        return self._read_all("datasources/")

    # -- inference specs ----------------------------------------------------------------------
    def create_inference(self, record: dict[str, Any]) -> dict[str, Any]:
        missing = [f"{f}: required" for f in InferenceSpec.stored_fields() if f not in record]
        if missing:
            raise ValidationFailed("incomplete inference spec", missing)
        inference_id = record.get("id") or uuid.uuid4().hex[:12]
        check_name("inference id", inference_id)
        out = stamped(record, id=inference_id)
        self._create(f"inference/{inference_id}.json", out, f"inference {inference_id!r}")
        return out

    def put_inference_manifests(self, inference_id: str, yaml_text: str) -> str:
        """Store the rendered manifests next to the spec; returns the key."""
        key = self._manifests_key(inference_id)
        self._store.put(key, yaml_text.encode(), content_type="application/yaml")
        return key

    def get_inference_manifests(self, inference_id: str) -> str:
        """The manifests stored next to the spec; ``NotFound`` when there are none."""
        return self._store.get(self._manifests_key(inference_id)).body.decode()

    def get_inference(self, inference_id: str) -> dict[str, Any]:
        check_name("inference id", inference_id)
        return self._read(f"inference/{inference_id}.json", f"no inference {inference_id!r}")

    def list_inference(self) -> list[dict[str, Any]]:
        return self._read_all("inference/")

    # -- plumbing -----------------------------------------------------------------------------
    @staticmethod
    def _model_key(name: str, version: int) -> str:
        return f"models/{name}/{version}/model.json"

    @staticmethod
    def _manifests_key(inference_id: str) -> str:
        return f"inference/{check_name('inference id', inference_id)}.yaml"
