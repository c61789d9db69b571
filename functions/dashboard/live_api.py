"""The JSON the live parts of the pages poll, and the chart library's files.

``GET /runs/<id>/live.json``: the run's status and, per model, every epoch's metrics: from the
results topic while it trains, from its stored ``history.json`` once it succeeded.
``GET /inference/<id>/live.json``: the sliding window of its output topic's predictions.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from functions.dashboard import assets
from functions.dashboard.live import curves_from_history
from functions.dashboard.parts import TERMINAL, Parts
from kafkaml.web import json_response

STATIC = Path(__file__).resolve().parent / "static"
"""The dashboard's own stylesheet and script."""


def live_routes(parts: Parts, vendor: Path) -> Blueprint:
    live = Blueprint("live", __name__)
    api = parts.register

    @live.get("/runs/<run_id>/live.json")
    def run_live(run_id: str) -> Response:
        record = api.find("runs", run_id)
        seen = parts.live.run(run_id)
        models = seen["models"]
        status = (record or {}).get("status") or seen["status"] or "waiting"
        if record is not None and status == "succeeded":
            for folder in record.get("models") or {}:
                history = parts.artifacts.json_of(record, folder, "history.json")
                if history:
                    models[folder] = curves_from_history(history)
        return json_response(
            {
                "run_id": run_id,
                "status": status,
                "terminal": status in TERMINAL,
                "reason": (record or {}).get("reason") or seen["reason"],
                "models": models,
                "feed_problem": seen["feed_problem"],
            }
        )

    @live.get("/inference/<inference_id>/live.json")
    def predictions_live(inference_id: str) -> Response:
        spec = api.get("inference", inference_id)
        return json_response(
            {"inference_id": spec["id"], **parts.live.predictions(spec["output_topic"])}
        )

    @live.get("/static/<name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC, name, max_age=300)

    @live.get("/vendor/<name>")
    def vendor_file(name: str) -> Response:
        if name not in assets.FILES.values():
            return json_response(
                {"error": f"no file {name}", "kind": "not_found", "status": 404}, 404
            )
        return send_from_directory(vendor, name, max_age=86400)

    return live
