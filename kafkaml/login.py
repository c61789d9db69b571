"""Sign-in for the functions people use in a browser (the dashboard).

A browser cannot add ``Authorization: Bearer`` to a link, so ``/login`` takes the token once
(a form, or ``?token=`` in a link ``kml`` prints) and keeps it in a session cookie: HttpOnly
(no script reads it), SameSite=Strict (no other site's page can send it along, so a forged
form post arrives without it) and Secure when the page came over HTTPS. ``/logout`` drops it.
A page asked for without a token redirects to ``/login?next=<page>``.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from flask import Blueprint, Response, redirect, request

from kafkaml.auth import COOKIE, OPEN, Access, requires

SESSION_S = 12 * 3600
"""How long the session cookie lasts."""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Kafka-ML: sign in</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:4rem auto}}
input{{width:100%;padding:.4rem}} .problem{{color:#b00020}}</style></head>
<body><h1>Sign in</h1>
<p>Paste a token (<code>kml tokens create --scope read --name me</code> makes one; the local
stack keeps its own in <code>.kml/auth/admin.token</code>).</p>
{problem}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<p><input type="password" name="token" autocomplete="off" aria-label="token" autofocus></p>
<p><button type="submit">Sign in</button></p>
</form></body></html>
"""


def wants_page(req) -> bool:
    """A browser asking for a page (not a script asking for JSON)."""
    return req.method == "GET" and "text/html" in req.headers.get("Accept", "")


def login_path(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='')}"


def safe_next(value: str | None) -> str:
    """A path on this site only (never ``//host`` or a URL elsewhere)."""
    value = (value or "/").rstrip("?")
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def routes(access: Access) -> Blueprint:
    """``GET/POST /login`` and ``GET /logout``."""
    bp = Blueprint("login", __name__)

    def page(problem: str = "", status: int = 200) -> Response:
        text = _PAGE.format(
            problem=f'<p class="problem">{html.escape(problem)}</p>' if problem else "",
            next=html.escape(safe_next(request.values.get("next"))),
        )
        return Response(text, status=status, mimetype="text/html")

    def sign_in(token: str) -> Response:
        if access.enabled and access.tokens.lookup(token) is None:
            return page("That token is unknown or revoked.", 401)
        response = redirect(safe_next(request.values.get("next")), code=303)
        response.set_cookie(
            COOKIE,
            token,
            max_age=SESSION_S,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @bp.get("/login")
    @requires(OPEN)
    def login_page() -> Response:
        token = request.args.get("token")
        return sign_in(token) if token else page()

    @bp.post("/login")
    @requires(OPEN)
    def login_form() -> Response:
        token = (request.form.get("token") or "").strip()
        return sign_in(token) if token else page("Paste a token.", 400)

    @bp.get("/logout")
    @requires(OPEN)
    def logout() -> Response:
        response = redirect("/login", code=303)
        response.delete_cookie(COOKIE)
        return response

    return bp
