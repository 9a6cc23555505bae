"""Pages carry a Content-Security-Policy without inline script, and no template needs one."""

from __future__ import annotations

import re
from pathlib import Path

from litestar import Litestar
from litestar.testing import TestClient

from .conftest import register

TEMPLATES = Path(__file__).resolve().parents[2] / "app" / "templates"


def test_pages_send_a_csp_without_inline_script(client: TestClient[Litestar]) -> None:
    register(client, "alice")
    for path in ("/login", "/dashboard", "/analyses/new", "/history", "/analyses/live"):
        policy = client.get(path).headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy


def test_no_template_has_inline_script_or_handlers() -> None:
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
    handler = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not inline_script.search(text), template.name
        assert not handler.search(text), template.name
