"""One access line per request, in the configured format, never with the query string."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.config import ConfigError, Settings
from app.logs import JsonFormatter
from app.main import create_app


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_lines_in_json(api_settings: Settings, tmp_path: Path) -> None:
    settings = replace(api_settings, data_dir=tmp_path, log_format="json")
    with TestClient(app=create_app(settings)) as client:
        root = logging.getLogger()
        assert isinstance(root.handlers[0].formatter, JsonFormatter)  # one format for all
        assert not logging.getLogger("uvicorn.error").handlers  # no second format
        seen = Records()
        logging.getLogger("app.access").addHandler(seen)
        try:
            r = client.get("/history", params={"patient": "Jane Doe"}, follow_redirects=False)
            client.get("/health/live")
        finally:
            logging.getLogger("app.access").removeHandler(seen)
    lines = [json.loads(JsonFormatter().format(rec)) for rec in seen.records]
    assert [(line["method"], line["path"]) for line in lines] == [
        ("GET", "/history"),
        ("GET", "/health/live"),
    ]
    first = lines[0]
    assert first["status"] == r.status_code and first["ms"] >= 0
    assert first["request_id"] == r.headers["x-request-id"]
    assert "Jane" not in json.dumps(lines)  # the query string never reaches the log


def test_log_format_is_checked() -> None:
    assert Settings.from_env({"APP_LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(ConfigError, match="APP_LOG_FORMAT"):
        Settings.from_env({"APP_LOG_FORMAT": "xml"})


def test_serve_help_lists_the_environment() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for name in ("APP_PORT", "APP_MODEL_PATH", "APP_LOG_FORMAT", "APP_MAX_UPLOAD_MB"):
        assert name in done.stdout


def test_schema_lists_the_api_only_and_declares_the_bearer_token(
    api_settings: Settings, tmp_path: Path
) -> None:
    settings = replace(api_settings, data_dir=tmp_path, api_auth=True)
    with TestClient(app=create_app(settings)) as client:
        schema = client.get("/schema/openapi.json").json()
    paths = set(schema["paths"])
    assert "/api/v1/predict" in paths and "/api/v1/analyses" in paths
    assert not paths & {"/login", "/register", "/history", "/analyses/new", "/dashboard"}
    scheme = schema["components"]["securitySchemes"]["apiToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert schema["paths"]["/api/v1/predict"]["post"]["security"] == [{"apiToken": []}]
