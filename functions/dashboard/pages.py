"""The dashboard's pages: each reads what it shows from register's read API (and, for a run's
curves and confusion matrix or an inference deployment's manifests, the stored files).

Page functions render a list page with its create form (empty, or as typed with register's
problems next to each field when a write was refused); :mod:`functions.dashboard.writes`
reuses them for the answer to a refused form.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, redirect, render_template, request

from functions.dashboard.forms import FormErrors
from functions.dashboard.parts import TERMINAL, Parts, layers_of, newest_first
from kafkaml.auth import WRITE
from kafkaml.errors import KmlError, NotFound
from kafkaml.web import caller

NO_ERRORS = FormErrors()


def html_error(e: KmlError) -> tuple[str, int]:
    """A page saying what failed and with which status (register down is a 503)."""
    return render_template("error.html", error=e), e.status


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(template, **context), status


def models_page(parts: Parts, form=None, errors=NO_ERRORS, status=200):
    models = sorted(parts.register.get("models"), key=lambda m: m["name"])
    return _page("models.html", status, models=models, form=form or {}, errors=errors)


def configurations_page(parts: Parts, form=None, errors=NO_ERRORS, status=200):
    configurations = newest_first(parts.register.get("configurations"))
    models = sorted(m["name"] for m in parts.register.get("models"))
    return _page(
        "configurations.html",
        status,
        configurations=configurations,
        models=models,
        form=form or {},
        errors=errors,
    )


def deployments_page(parts: Parts, form=None, errors=NO_ERRORS, status=200):
    deployments = newest_first(parts.register.get("deployments"))
    configurations = sorted(c["name"] for c in parts.register.get("configurations"))
    models = sorted(m["name"] for m in parts.register.get("models"))
    return _page(
        "deployments.html",
        status,
        deployments=deployments,
        configurations=configurations,
        models=models,
        form=form or {"shuffle": "on", "epochs": "10", "batch_size": "32"},
        errors=errors,
    )


def inference_page(parts: Parts, form=None, errors=NO_ERRORS, status=200):
    specs = newest_first(parts.register.get("inference"))
    runs = [r for r in newest_first(parts.register.get("runs")) if r.get("status") == "succeeded"]
    wanted = form or {"run_id": request.args.get("run_id", "")}
    return _page("inference.html", status, specs=specs, runs=runs, form=wanted, errors=errors)


def stored_datasource(parts: Parts, datasource_id: str) -> dict[str, Any]:
    """One datasource of register's list (the read API lists them; it has no route for one)."""
    for datasource in parts.register.get("datasources"):
        if datasource.get("id") == datasource_id:
            return datasource
    raise NotFound(f"no datasource {datasource_id!r}", datasource_id=datasource_id)


def datasource_page(parts: Parts, datasource_id: str, form=None, errors=NO_ERRORS, status=200):
    datasource = stored_datasource(parts, datasource_id)
    deployments = newest_first(parts.register.get("deployments"))
    runs = [r for r in parts.register.get("runs") if r.get("datasource_id") == datasource_id]
    return _page(
        "datasource.html",
        status,
        datasource=datasource,
        deployments=deployments,
        runs=newest_first(runs),
        form=form or {},
        errors=errors,
    )


def stream_chart(stream: dict[str, Any]) -> dict[str, Any]:
    """The monitored metric per window (promoted, candidate, and the frozen first promoted
    model), and which windows promoted:
    what the stream page's chart draws (taken from the stream record as register answers it)."""
    windows = stream.get("windows") or []
    return {
        "metric": stream.get("metric") or "",
        "change": stream.get("change") or "",
        "windows": [w.get("index", i) for i, w in enumerate(windows)],
        "promoted": [w.get("promoted") for w in windows],
        "candidate": [w.get("candidate") for w in windows],
        "frozen": [w.get("baseline") for w in windows],
        "promote": [bool(w.get("promote")) for w in windows],
    }


def read_pages(parts: Parts) -> Blueprint:
    pages = Blueprint("pages", __name__, template_folder="templates")
    pages.register_error_handler(KmlError, html_error)
    api = parts.register

    @pages.get("/")
    def overview():
        runs = newest_first(api.get("runs"), "updated")
        counts = {
            "models": len(api.get("models")),
            "configurations": len(api.get("configurations")),
            "deployments": len(api.get("deployments")),
            "runs": len(runs),
            "datasources": len(api.get("datasources")),
            "inference": len(api.get("inference")),
            "streams": len(api.get("streams")),
        }
        by_status: dict[str, int] = {}
        for run in runs:
            by_status[run.get("status", "?")] = by_status.get(run.get("status", "?"), 0) + 1
        return render_template(
            "overview.html", counts=counts, by_status=by_status, runs=runs[:8], register=api.url
        )

    @pages.get("/models")
    def models():
        return models_page(parts)

    @pages.get("/models/<name>")
    @pages.get("/models/<name>/<version>")
    def model(name: str, version: str | None = None):
        record = api.get("models", name, version) if version else api.get("models", name)
        versions = next((m["versions"] for m in api.get("models") if m["name"] == name), [])
        return render_template(
            "model.html", model=record, versions=versions, layers=layers_of(record)
        )

    @pages.get("/configurations")
    def configurations():
        return configurations_page(parts)

    @pages.get("/deployments")
    def deployments():
        return deployments_page(parts)

    @pages.get("/deployments/<deployment_id>")
    def deployment(deployment_id: str):
        record = api.get("deployments", deployment_id)
        runs = [r for r in api.get("runs") if r.get("deployment_id") == record["id"]]
        return render_template(
            "deployment.html",
            deployment=record,
            runs=newest_first(runs),
            settings=parts.settings,
        )

    @pages.get("/runs")
    def runs():
        return render_template("runs.html", runs=newest_first(api.get("runs")))

    @pages.get("/runs/<run_id>")
    def run(run_id: str):
        record = api.find("runs", run_id)
        models = []
        for folder, result in sorted(((record or {}).get("models") or {}).items()):
            stored = parts.artifacts.json_of(record, folder, "metrics.json") or {}
            models.append(
                {
                    "folder": folder,
                    "result": result,
                    "metrics": result.get("metrics") or {},
                    "confusion": stored.get("confusion_matrix"),
                }
            )
        return render_template(
            "run.html",
            run_id=run_id,
            run=record,
            models=models,
            terminal=bool(record) and record.get("status") in TERMINAL,
        )

    @pages.get("/runs/<run_id>/artifacts/<model>/<filename>")
    def artifact(run_id: str, model: str, filename: str) -> Response:
        record = api.get("runs", run_id)
        return redirect(parts.artifacts.download_url(record, model, filename), code=302)

    @pages.get("/datasources")
    def datasources():
        return render_template("datasources.html", datasources=newest_first(api.get("datasources")))

    @pages.get("/datasources/<datasource_id>")
    def datasource(datasource_id: str):
        return datasource_page(parts, datasource_id)

    @pages.get("/streams")
    def streams():
        return render_template("streams.html", streams=newest_first(api.get("streams")))

    @pages.get("/streams/<stream_id>")
    def stream(stream_id: str):
        record = api.get("streams", stream_id)
        return render_template(
            "stream.html",
            stream=record,
            chart=stream_chart(record),
            can_write=caller(request).allows((WRITE,)),
        )

    @pages.get("/inference")
    def inference_list():
        return inference_page(parts)

    @pages.get("/inference/<inference_id>")
    def inference(inference_id: str):
        spec = api.get("inference", inference_id)
        return render_template(
            "inference_detail.html", spec=spec, manifests=parts.artifacts.manifests(spec)
        )

    return pages
