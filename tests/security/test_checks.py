"""The checks made before Keras sees a model, as plain functions (no Keras, no storage)."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from functions.register.allowlist import MAX_DEPTH, check_reference, scan_config
from functions.register.archive import Limits, read_members
from kafkaml.errors import ValidationFailed


def _ref(cls: str, module: str | None = "keras.layers", **extra) -> dict:
    return {"module": module, "class_name": cls, "config": {}, "registered_name": None, **extra}


def test_what_keras_writes_for_a_functional_model_passes():
    tensor = {"class_name": "__keras_tensor__", "config": {"shape": [None, 4], "dtype": "float32"}}
    dense = _ref("Dense", kernel_initializer=_ref("GlorotUniform", "keras.initializers"))
    config = {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "registered_name": "Functional",
        "config": {
            "layers": [dense | {"inbound_nodes": [{"args": [tensor]}]}],
            "dtype": _ref("DTypePolicy", "keras"),
        },
        "compile_config": {
            "optimizer": _ref("Adam", "keras.optimizers"),
            "loss": {"module": "builtins", "class_name": "function", "config": "huber"},
            "metrics": ["accuracy", _ref("AUC", "keras.metrics")],
        },
    }
    assert scan_config(config) == []


@pytest.mark.parametrize(
    "ref, says",
    [
        (_ref("TFSMLayer"), "TFSMLayer layer refused (keras.layers.TFSMLayer)"),
        (_ref("TFSMLayer", "keras.src.export.tfsm_layer"), "TFSMLayer layer refused"),
        (_ref("Dense", "keras.src.layers.core.dense"), "keras.src.layers.core.dense.Dense refused"),
        (_ref("Layer"), "keras.layers.Layer refused: not one of the built-in"),
        (_ref("Dense", registered_name="Dense2"), "registered_name 'Dense2'"),
        (_ref("Dense", registered_name="pkg>Dense"), "custom registered object 'pkg>Dense'"),
        (_ref("TextVectorization"), "can read its vocabulary from a file path"),
        (_ref("__numpy__", "numpy"), "values carry no module"),
        (_ref("__typespec__", None), "__typespec__ object refused"),
        ({"class_name": "function", "module": "os", "config": "system"}, "function os.system"),
        (
            {"class_name": "function", "module": "builtins", "config": "eval"},
            "function builtins.eval",
        ),
        ({"class_name": "function", "module": "builtins", "config": {"code": "x"}}, "its config"),
        ({"class_name": ["Dense"], "module": "keras.layers"}, "must be strings"),
    ],
)
def test_references_outside_the_allowlist_say_why(ref, says):
    problem = check_reference(ref)
    assert problem is not None and says in problem, problem


def test_every_refusal_carries_its_path_and_deep_nesting_is_refused():
    config = {"config": {"layers": [_ref("Dense"), _ref("Dense", activation=_ref("Lambda"))]}}
    assert scan_config(config, "x") == [
        "x.config.layers[1].activation: Lambda layer refused (keras.layers.Lambda): it carries "
        "Python code, which the server never runs; use built-in layers"
    ]
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH + 5):
        node["a"] = {}
        node = node["a"]
    assert any("nested deeper than" in p for p in scan_config(deep))


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _refusal(raw: bytes, limits: Limits | None = None) -> str:
    with pytest.raises(ValidationFailed) as e:
        read_members(raw, limits or Limits())
    assert e.value.status == 422
    return e.value.problems[0]


def test_a_declared_size_past_the_cap_is_refused_before_reading():
    raw = _zip({"config.json": b"{}" + b" " * 4096})
    problem = _refusal(raw, Limits(config_max_bytes=1024))
    assert problem == (
        "keras_b64.config.json: declares 4098 bytes, more than the 1024-byte cap "
        "(KML_REGISTER_KERAS_CONFIG_MAX_BYTES)"
    )


def test_a_header_that_understates_the_size_is_caught_by_the_bounded_read():
    raw = bytearray(_zip({"config.json": b"{}" + b" " * 100_000}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(sig)
        raw[at + offset : at + offset + 4] = struct.pack("<I", 10)
    assert _refusal(bytes(raw), Limits(config_max_bytes=1024)).startswith(
        "keras_b64.config.json: unreadable (Bad CRC-32"
    )


def test_only_the_members_of_a_keras_file_are_accepted():
    assert "member 'evil.so' refused" in _refusal(_zip({"config.json": b"{}", "evil.so": b"x"}))
    assert _refusal(_zip({"metadata.json": b"{}"})) == "keras_b64: config.json missing"
    members = read_members(_zip({"config.json": b"{}", "model.weights.h5": b"w"}), Limits())
    assert members == {"config.json": b"{}", "model.weights.h5": b"w"}


def test_allowlisted_names_all_resolve_in_the_installed_keras(build):
    assert build("missing_allowlisted") == []
