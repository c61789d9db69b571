"""The typed registry records, pure: defaults, every bad field at once, JSON round trips."""

from __future__ import annotations

import dataclasses

import pytest

from functions.register import schemas
from kafkaml.errors import Conflict, ValidationFailed
from kafkaml.manifests import render_inference_manifests
from kafkaml.settings import Settings
from storage.records import (
    CLAIMED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    Configuration,
    Datasource,
    Model,
    ModelRef,
    Run,
    check_transition,
)
from storage.specs import FIT_KEYWORDS, Deployment, InferenceSpec

STORED_MODEL = {
    "name": "digits",
    "version": 2,
    "description": "mlp",
    "format": "keras_json",
    "keras_json": '{"class_name": "Sequential"}',
    "compile": {"optimizer": "adam", "loss": "mse", "metrics": ["mae"]},
    "param_count": 23,
    "input_shape": [None, 4],
    "output_shape": [None, 2],
    "keras_version": "3.12.0",
    "schema_version": 1,
    "created": "2026-01-01T00:00:00.000Z",
}
STORED_DEPLOYMENT = {
    "id": "7",
    "description": "",
    "configuration": None,
    "models": ["digits@2"],
    "batch_size": 16,
    "epochs": 3,
    "shuffle": False,
    "seed": None,
    "learning_rate": 0.01,
    "fit_kwargs": {"class_weight": {"0": 1.0, "1": 2.0}},
    "evaluate_kwargs": {},
    "schema_version": 1,
    "created": "2026-01-01T00:00:00.000Z",
}
STORED_SPEC = {
    "run_id": "run-abc",
    "model": "digits",
    "input_format": "RAW",
    "input_config": {"data_type": "uint8"},
    "input_topic": "in",
    "output_topic": "out",
    "min_scale": 1,
    "max_scale": 3,
    "target_concurrency": 8,
    "mode": "event",
    "id": "digits1",
    "schema_version": 1,
    "created": "2026-01-01T00:00:00.000Z",
}
STORED_RUN = {
    "deployment_id": "7",
    "datasource_id": "ds1",
    "ranges": ["t:0:0:10"],
    "attempt": 2,
    "run_id": "run-abc",
    "status": "succeeded",
    "permanent": False,
    "models": {"digits": {"model": "digits@2", "artifacts": {"model.keras": "runs/x"}}},
    "seed": 42,
    "schema_version": 1,
    "created": "2026-01-01T00:00:00.000Z",
    "updated": "2026-01-01T00:01:00.000Z",
}


@pytest.mark.parametrize(
    ("cls", "stored"),
    [
        (Model, STORED_MODEL),
        (Configuration, {"name": "c", "description": "", "requested": ["a"], "models": ["a@1"]}),
        (Deployment, STORED_DEPLOYMENT),
        (Datasource, {"id": "ds1", "control_message": {"topic": "t:0:0:5"}, "ranges": ["t:0:0:5"]}),
        (Run, STORED_RUN),
        (InferenceSpec, STORED_SPEC),
        (InferenceSpec, {**STORED_SPEC, "image": "example/infer:dev"}),
    ],
)
def test_a_stored_record_reads_and_writes_back_unchanged(cls, stored):
    record = cls.from_dict(stored)
    assert record.to_dict() == stored
    assert cls.from_dict(record.to_dict()) == record


def test_records_are_frozen_and_typed():
    deployment = Deployment.from_dict(STORED_DEPLOYMENT)
    assert deployment.models == ("digits@2",) and deployment.epochs == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        deployment.epochs = 5  # type: ignore[misc]
    run = Run.from_dict(STORED_RUN)
    assert run.status == "succeeded" and run.extra["seed"] == 42


def test_deployment_defaults_are_applied_once_for_what_is_not_given():
    record = Deployment.from_dict({"models": ["digits"], "epochs": 4}).to_dict()
    assert record == {
        "id": None,
        "description": "",
        "configuration": None,
        "models": ["digits"],
        "batch_size": 32,
        "epochs": 4,
        "shuffle": True,
        "seed": None,
        "learning_rate": None,
        "fit_kwargs": {},
        "evaluate_kwargs": {},
    }
    assert Deployment.from_dict({"id": 7, "epochs": None}).id == "7"
    assert Deployment.from_dict({"epochs": None}).epochs == 1, "null reads as the default"


def test_the_inference_defaults_are_the_ones_the_manifests_render():
    given = {k: v for k, v in STORED_SPEC.items() if "scale" not in k and k != "target_concurrency"}
    spec = InferenceSpec.from_dict(given)
    assert (spec.min_scale, spec.max_scale, spec.target_concurrency) == (0, 5, 10)
    service = render_inference_manifests(given, Settings())[0]["spec"]["template"]
    annotations = service["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == str(spec.min_scale)
    assert annotations["autoscaling.knative.dev/max-scale"] == str(spec.max_scale)
    assert service["spec"]["containerConcurrency"] == spec.target_concurrency
    assert InferenceSpec.problems({"run_id": "r", "input_topic": "a", "output_topic": "b"}) == []


def test_every_bad_deployment_field_is_listed_at_once():
    bad = {
        "id": "a/b",
        "models": ["ok", "../x"],
        "batch_size": 0,
        "epochs": "ten",
        "shuffle": "yes",
        "seed": -1,
        "learning_rate": 0,
        "fit_kwargs": {"steps_per_epoch": 0},
        "evaluate_kwargs": "all",
        "replicas": 3,
    }
    with pytest.raises(ValidationFailed) as e:
        Deployment.parse(bad)
    assert e.value.status == 422 and e.value.message == "invalid deployment: 10 problem(s)"
    assert [p.split(":")[0] for p in e.value.problems] == [
        "replicas",
        "id",
        "models[1]",
        "batch_size",
        "epochs",
        "shuffle",
        "seed",
        "learning_rate",
        "fit_kwargs.steps_per_epoch",
        "evaluate_kwargs",
    ]
    assert "epochs: 'ten' must be an integer at least 1 and at most 100000" in e.value.problems
    assert schemas.check_deployment(bad) == e.value.problems, "the register event's own check"


def test_unknown_fit_keyword_is_refused_naming_it():
    problems = Deployment.problems({"models": ["m"], "fit_kwargs": {"callbacks": ["x"]}})
    assert problems == [
        f"fit_kwargs.callbacks: not allowed (allowed: {', '.join(sorted(FIT_KEYWORDS))})"
    ]
    stored = Deployment.from_dict({**STORED_DEPLOYMENT, "evaluate_kwargs": {"verbose": 2}})
    assert [p.split(":")[0] for p in stored.keyword_problems()] == ["evaluate_kwargs.verbose"]
    assert Deployment.from_dict(STORED_DEPLOYMENT).keyword_problems() == []


def test_every_bad_inference_field_is_listed_at_once():
    problems = InferenceSpec.problems(
        {
            "id": "Not_DNS",
            "run_id": "../x",
            "input_format": "CSV",
            "input_topic": "same",
            "output_topic": "same",
            "min_scale": 7,
            "target_concurrency": 0,
            "image": "bad image",
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "id",
        "run_id",
        "input_format",
        "output_topic",
        "min_scale",
        "target_concurrency",
        "image",
    ]
    assert "min_scale: 7 is above max_scale 5" in problems, "compared with the default"
    assert "input_format: 'CSV' must be one of RAW, AVRO, JSON" in problems


def test_a_record_without_its_required_fields_names_each():
    with pytest.raises(ValidationFailed) as e:
        InferenceSpec.from_dict({"run_id": "r", "input_topic": "in"})
    assert e.value.problems == [
        "model: required",
        "input_format: required",
        "input_config: required",
        "output_topic: required",
    ]
    with pytest.raises(ValidationFailed) as e:
        Model.from_dict({"name": "m"})
    assert e.value.problems == ["version: required"]


def test_configuration_event_is_checked_by_its_record():
    assert Configuration.problems({"name": "c", "models": ["a", "b@2"]}) == []
    problems = Configuration.problems({"name": "", "models": [], "requested": ["a"]})
    assert [p.split(":")[0] for p in problems] == ["requested", "name", "models"]
    assert Configuration.parse({"name": "c", "models": ["a"]}).models == ("a",)


@pytest.mark.parametrize("ref", ["m@²", "m@٣", "m@1²", "m@ 1", "m@-1", "m@0"])
def test_a_model_ref_whose_version_is_not_ascii_digits_is_422_naming_it(ref):
    with pytest.raises(ValidationFailed) as e:
        ModelRef.parse(ref)
    assert e.value.problems == [f"model ref {ref!r}: version must be a positive integer"]
    assert [p.split(":")[0] for p in Deployment.problems({"models": [ref]})] == ["models[0]"]


def test_a_class_weight_index_that_is_not_ascii_digits_is_refused_naming_it():
    problems = Deployment.problems({"models": ["m"], "fit_kwargs": {"class_weight": {"²": 2.0}}})
    assert problems == ["fit_kwargs.class_weight: must map class indices to numbers"]
    assert Deployment.problems({"models": ["m"], "fit_kwargs": {"class_weight": {"2": 2.0}}}) == []


def test_a_running_run_whose_lease_lapsed_may_be_claimed_again_a_permanent_failure_may_not():
    check_transition("r", {"status": RUNNING}, CLAIMED)  # a redelivery takes the run over
    check_transition("r", {"status": FAILED, "permanent": False}, CLAIMED)
    with pytest.raises(Conflict):
        check_transition("r", {"status": FAILED, "permanent": True}, CLAIMED)
    with pytest.raises(Conflict):
        check_transition("r", {"status": SUCCEEDED}, CLAIMED)
