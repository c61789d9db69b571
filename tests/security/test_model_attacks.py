"""One test per model attack, through the register app against the real MinIO.

Every attack is an artifact a real attacker could send (built with real Keras, TensorFlow and
h5py); the answer must be a 422 that names what was refused and where, before Keras runs it.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import zipfile

import pytest

from kafkaml.events import MODEL_REGISTER
from tests.security.conftest import COMPILE

pytestmark = pytest.mark.integration


def _problems(r) -> list[str]:
    assert r.status_code == 422, r.data
    body = r.get_json()
    assert body["kind"] == "validation_failed"
    return body["problems"]


def test_tfsmlayer_over_a_real_savedmodel_is_refused_naming_it(send, build, tmp_path, unique):
    config = build("tfsm_model_json", str(tmp_path / "payload"))
    r = send(MODEL_REGISTER, {"name": f"t-{unique}", "keras_json": config, "compile": COMPILE})
    problems = _problems(r)
    assert any(
        re.match(r"keras_json\.config\.layers\[\d\]: TFSMLayer layer refused", p) for p in problems
    ), problems
    assert "SavedModel" in " ".join(problems)


def test_lambda_layer_is_refused_naming_it(send, build, unique):
    config = build("lambda_model_json")
    r = send(MODEL_REGISTER, {"name": f"l-{unique}", "keras_json": config, "compile": COMPILE})
    problems = _problems(r)
    assert any(re.match(r"keras_json\.config\.layers\[\d\]: Lambda layer", p) for p in problems)
    assert any(".config.function: __lambda__" in p for p in problems), problems


@pytest.mark.parametrize(
    "reference, named",
    [
        # a class from the sender's own package
        ({"module": "mypackage.layers", "class_name": "MyDense"}, "mypackage.layers.MyDense"),
        # a Keras class reached through its source module, reading a file at load time
        (
            {
                "module": "keras.src.layers.preprocessing.string_lookup",
                "class_name": "StringLookup",
                "config": {"vocabulary": "/etc/passwd", "name": "lookup"},
            },
            "StringLookup",
        ),
        # a Keras function that is no activation (it downloads and opens files)
        (
            {"module": "keras.utils", "class_name": "function", "config": "get_file"},
            "keras.utils.get_file",
        ),
    ],
    ids=["custom-module", "keras-src-file-reader", "keras-utils-function"],
)
def test_objects_outside_the_allowlist_are_refused_naming_them(
    send, build, unique, reference, named
):
    config = json.loads(build("tiny_model_json"))
    layers = config["config"]["layers"]  # [InputLayer, Dense, Dense]
    if reference["class_name"] == "function":
        layers[1]["config"]["activation"] = {**reference, "registered_name": "function"}
        where = "keras_json.config.layers[1].config.activation: "
    else:
        layers[1] = {"config": {}, **reference, "registered_name": None}
        where = "keras_json.config.layers[1]: "
    event = {"name": f"c-{unique}", "keras_json": json.dumps(config), "compile": COMPILE}
    problems = _problems(send(MODEL_REGISTER, event))
    assert any(p.startswith(where) and named in p and "refused" in p for p in problems), problems


@pytest.mark.parametrize(
    "attack, refusal",
    [
        ("external_dataset_keras_b64", "dataset with external storage"),
        ("external_link_keras_b64", "external link to"),
        ("huge_shape_keras_b64", "KML_REGISTER_KERAS_MEMBER_MAX_BYTES cap"),
    ],
    ids=["external-dataset", "external-link", "huge-shape"],
)
def test_hdf5_weights_reaching_outside_the_file_are_refused(
    send, build, tmp_path, unique, attack, refusal
):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S3CRET-" * 8)
    target = str(secret) if attack == "external_dataset_keras_b64" else str(tmp_path / "o.h5")
    keras_b64 = build(attack, *([target] if attack != "huge_shape_keras_b64" else []))
    problems = _problems(send(MODEL_REGISTER, {"name": f"h-{unique}", "keras_b64": keras_b64}))
    assert any(
        re.match(r"keras_b64\.model\.weights\.h5:/\S+: ", p) and refusal in p for p in problems
    ), problems


def _bomb(real: bytes, filler: int, lie: bool) -> str:
    """The real archive with ``filler`` spaces appended to config.json (valid JSON still).

    With ``lie`` the zip headers claim config.json is only as large as the real config.
    """
    src = zipfile.ZipFile(io.BytesIO(real))
    config = src.read("config.json")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        dst.writestr("metadata.json", src.read("metadata.json"))
        with dst.open("config.json", "w", force_zip64=False) as f:
            f.write(config)
            for _ in range(filler // (1 << 20)):
                f.write(b" " * (1 << 20))
        dst.writestr("model.weights.h5", src.read("model.weights.h5"))
    data = bytearray(out.getvalue())
    if lie:
        declared = struct.pack("<I", filler + len(config))
        honest = struct.pack("<I", len(config))
        for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
            at = data.find(sig + b"", 0)
            while at != -1:
                if data[at + offset : at + offset + 4] == declared:
                    data[at + offset : at + offset + 4] = honest
                at = data.find(sig, at + 4)
        assert zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("config.json").file_size == len(
            config
        )
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("lie", [False, True], ids=["honest-header", "lying-header"])
def test_zip_bomb_is_refused_quickly_and_the_next_model_registers(send, build, unique, lie):
    real = build("tiny_keras_bytes")
    bomb = _bomb(real, 256 << 20, lie)  # 256 MiB of config.json in about 300 KB
    assert len(bomb) < 1 << 20
    started = time.monotonic()
    r = send(MODEL_REGISTER, {"name": f"z-{unique}", "keras_b64": bomb})
    took = time.monotonic() - started
    problems = _problems(r)
    if lie:
        assert any(p.startswith("keras_b64.config.json: unreadable") for p in problems), problems
    else:
        assert any(
            p.startswith("keras_b64.config.json: declares")
            and "KML_REGISTER_KERAS_CONFIG_MAX_BYTES" in p
            for p in problems
        ), problems
    assert took < 20, f"the refusal took {took:.1f} s"
    ok = send(MODEL_REGISTER, {"name": f"z-{unique}", "keras_b64": base64.b64encode(real).decode()})
    assert ok.status_code == 201, ok.data
