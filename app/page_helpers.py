"""What page routes share: rendering with the common context, flash messages, form fields,
the client's address, and the HTML side of errors. Routes import this, never ``app.web``
(which wires the routes together) and never each other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.response import Redirect, Template

from app.errors import AppError
from app.inference import formats
from app.inference.classifier import DISCLAIMER

# Token-authenticated or anonymous machine endpoints: no session, no CSRF, JSON errors.
MACHINE_PREFIXES = ("/api", "/health", "/metrics", "/ws", "/schema", "/v1", "/v2")


def is_machine_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MACHINE_PREFIXES)


def client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""


def form_text(value: object, field: str) -> str:
    """A submitted text field, stripped; a NUL character is refused (400), not left for
    PostgreSQL to reject with a 500 (SQLite would store it)."""
    text = str(value or "").strip()
    if "\x00" in text:
        raise AppError(f"the {field} contains a NUL character")
    return text


def wants_html(request: Request[Any, Any, Any]) -> bool:
    """Page routes answer errors as HTML; the JSON API and probes keep the JSON shape."""
    if is_machine_path(request.url.path):
        return False
    accept = request.headers.get("accept", "")
    return "application/json" not in accept or "text/html" in accept


def _login_url(request: Request[Any, Any, Any]) -> str:
    """Log in, then come back: to this page, or after a form post (say, a session that expired
    while filling in the upload form) to the page the form was on, since the post's own URL
    answers only POST. The login route refuses any `next` that leaves the site."""
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        referer = urlsplit(request.headers.get("referer", ""))
        if referer.netloc != request.url.netloc or not referer.path:
            return "/login"
        target = referer.path + (f"?{referer.query}" if referer.query else "")
    return f"/login?next={quote(target)}"


def html_error(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    """The HTML side of the one error handler in app/error_responses.py."""
    if code == "login_required":
        return Redirect(_login_url(request), status_code=303)
    if status == 403 and "csrf" in detail.lower():
        detail = "The form expired or was sent from another site. Reload the page and try again."
    return Template(
        "error.html",
        context={"status": status, "code": code, "detail": detail},
        status_code=status,
        headers=headers,
    )


def session_data(request: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
    """The cookie session's contents; ``{}`` also after ``clear_session()`` in this request,
    which leaves Litestar's ``Empty`` marker (truthy) in the scope, not a dict."""
    session = request.scope.get("session")
    return session if isinstance(session, dict) else {}


def flash(request: Request[Any, Any, Any], message: str, category: str = "info") -> None:
    session = dict(session_data(request))
    if not session:  # anonymous visitors get no session just for a message
        return
    session["flash"] = [*session.get("flash", []), [category, message]]
    request.set_session(session)


def pop_flashes(request: Request[Any, Any, Any]) -> Sequence[tuple[str, str]]:
    session = session_data(request)
    messages = session.get("flash") or []
    if messages:
        request.set_session({k: v for k, v in session.items() if k != "flash"})
    return [tuple(m) for m in messages]


def render(
    request: Request[Any, Any, Any], name: str, status_code: int = 200, **context: Any
) -> Template:
    """Render a page with the shared context (user, flashes, disclaimer)."""
    state = request.scope.get("state", {})
    return Template(
        name,
        context={
            "user": state.get("current_user"),
            "flashes": pop_flashes(request),
            "disclaimer": DISCLAIMER,
            # the upload form's file input and its hint, from the format registry
            "accept": formats.accept(),
            "formats": formats.listing("or", notes=True),
            **context,
        },
        status_code=status_code,
    )
