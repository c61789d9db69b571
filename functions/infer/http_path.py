"""The HTTP path: ``{"instances": [...]}`` -> ``{"predictions": [...]}``, one model call each.

Used by the ``kml.inference.request`` CloudEvent and by KServe's V1 protocol
(``POST /v1/models/<name>:predict``). An instance is a JSON array shaped like one input, or
flat (then reshaped to the model's input shape).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from functions.infer.batcher import Outputs, split_rows
from functions.infer.model import version_of
from functions.infer.serving import InferenceService
from kafkaml.errors import BadRequest, PayloadTooLarge, ValidationFailed


def instances_of(body: Any) -> list[Any]:
    """The ``instances`` list of a request body; anything else is a 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"instances": [...]}')
    instances = body.get("instances")
    if instances is None:
        raise BadRequest('the body has no "instances" (KServe V1: {"instances": [...]})')
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of arrays')
    return instances


def to_batch(
    instances: list[Any], dtype: np.dtype, shape: tuple[int | None, ...] = ()
) -> np.ndarray:
    """The instances as one array ``[n, ...]``; ragged or non-numeric ones are a 422.

    When the instances differ in layout only (some flat, some shaped), each is laid out as
    ``shape`` (the model's input) before stacking.
    """
    try:
        x = np.asarray(instances, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        x = _stack_as(instances, dtype, shape)
        if x is None:
            shapes = sorted(
                {str(list(np.shape(i))) if _numeric(i) else "non-numeric" for i in instances}
            )
            raise ValidationFailed(
                "instances are not numeric arrays of one shape",
                [
                    f"instances: found shapes {', '.join(shapes[:5])}; every instance must have "
                    "the same shape and hold numbers"
                ],
            ) from None
    if x.ndim == 1:
        x = x.reshape(len(instances), 1)
    return x


def _stack_as(
    instances: list[Any], dtype: np.dtype, shape: tuple[int | None, ...]
) -> np.ndarray | None:
    if not shape or None in shape:
        return None
    size = math.prod(shape)
    try:
        rows = [np.asarray(i, dtype=dtype) for i in instances]
    except (ValueError, TypeError, OverflowError):
        return None
    if any(r.size != size for r in rows):
        return None
    return np.stack([r.reshape(shape) for r in rows])


def predict_instances(service: InferenceService, body: Any) -> dict[str, Any]:
    """Predictions for every instance of ``body``, computed in one (batched) model call."""
    return predictions_answer(service.predict(instances_batch(service, body)))


def predictions_answer(outputs: Outputs) -> dict[str, Any]:
    """KServe V1's answer for ``outputs``, with the model version that computed them."""
    answer: dict[str, Any] = {"predictions": split_rows(outputs)}
    version = version_of(outputs)
    if version is not None:
        answer["model_version"] = version
    return answer


def instances_batch(service: InferenceService, body: Any) -> np.ndarray:
    """The instances of ``body`` as the model's input; more instances than
    ``infer_max_instances`` are a 413 naming the cap."""
    instances = instances_of(body)
    cap = service.settings.infer_max_instances
    if len(instances) > cap:
        raise PayloadTooLarge(
            f"{len(instances)} instances is above the cap of {cap} per request "
            "(KML_INFER_MAX_INSTANCES); send them in several requests",
            limit=cap,
            setting="KML_INFER_MAX_INSTANCES",
        )
    model = service.loaded.model
    return service.conform(to_batch(instances, model.input_dtype, model.input_shape))


def model_metadata(service: InferenceService) -> dict[str, Any]:
    """KServe V1 model status, plus what this deployment serves."""
    loaded = service.loaded
    spec = loaded.spec
    return {
        "name": spec["id"],
        "ready": True,
        "model": spec["model"],
        "run_id": spec["run_id"],
        "runtime": loaded.model.runtime,
        "model_version": loaded.version,
        "stream": spec.get("stream"),
        "following": service.following,
        "input_shape": [d if d is not None else -1 for d in loaded.model.input_shape],
        "input_dtype": loaded.model.input_dtype.name,
        "input_format": spec.get("input_format"),
        "input_topic": spec.get("input_topic"),
        "output_topic": spec.get("output_topic"),
    }


def _numeric(value: Any) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return False
    return True
