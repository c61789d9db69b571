"""The dashboard function: web pages over the whole pipeline, for people in a browser.

Everything shown comes from register's read API, the results topic (live per-epoch curves) and
an inference deployment's output topic (live predictions); every write is a register event (or
a stored stream's control message again), so a refused form shows register's own messages.
Served by ``gunicorn 'functions.dashboard.app:create_app()'``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask
from jinja2 import Undefined
from markupsafe import Markup, escape

from functions.dashboard import assets
from functions.dashboard.live_api import live_routes
from functions.dashboard.pages import read_pages
from functions.dashboard.parts import Parts
from functions.dashboard.writes import write_routes
from kafkaml.settings import Settings
from kafkaml.web import Function, function_app


def create_app(settings: Settings | None = None, store: Any = None) -> Flask:
    """The Flask app; ``store`` (an object store) defaults to one over the settings'."""
    app = function_app(settings, lambda s: build(s, Parts.from_settings(s, store)))
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    return app


def shown(value: Any) -> Markup:
    """A stored field as JSON text, or a dash when the record lacks it: a record written by an
    older release (or by hand) still lists instead of failing the whole page."""
    if isinstance(value, Undefined) or value is None:
        return Markup("&mdash;")
    return escape(json.dumps(value, default=str))


def build(settings: Settings, parts: Parts) -> Function:
    """The dashboard's parts: its pages, the live JSON, the chart library, the tails it closes.

    Fails at start when the chart library is missing (the message names the fetch command),
    so a dashboard that cannot draw never becomes ready."""
    vendor = assets.require(settings)
    return Function(
        name="dashboard",
        events={},
        ready=parts.live.check,
        close=parts.live.close,
        blueprints=[
            filters(),
            read_pages(parts),
            write_routes(parts),
            live_routes(parts, vendor),
        ],
        browser_login=True,  # pages need read, forms write: a token kept in a session cookie
    )


def filters() -> Blueprint:
    """The templates' own filters, on whichever app serves the pages."""
    bp = Blueprint("filters", __name__)
    bp.add_app_template_filter(shown, "shown")
    return bp
