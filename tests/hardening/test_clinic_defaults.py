"""Finding "clinic defaults" (low), in part: no patient data in caches (Cache-Control:
no-store), HSTS over HTTPS, a private data directory (0700, files 0600) under the default umask,
and form limits named for what they are instead of "Request Entity Too Large"."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hardening.server import Server, running_server

CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the default the red team saw: 0644 files, 0755 directories
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def clinic(
    tmp_path_factory: pytest.TempPathFactory, umask_022: None
) -> Iterator[tuple[Server, Path]]:
    data = tmp_path_factory.mktemp("clinic") / "data"
    with running_server(data) as server:
        yield server, data


@pytest.fixture(scope="module")
def browser(clinic: tuple[Server, Path]) -> Iterator[httpx.Client]:
    server, _ = clinic
    with httpx.Client(base_url=server.url, timeout=60) as client:
        token = CSRF_RE.search(client.get("/register").text)
        assert token
        password = "correct horse battery staple"
        form = {"username": "clinician", "password": password, "confirm": password}
        r = client.post("/register", data={**form, "_csrf_token": token.group(1)})
        assert r.status_code in (200, 303), r.text
        yield client


def upload(client: httpx.Client, files: list[tuple[str, bytes]], **headers: str) -> httpx.Response:
    token = CSRF_RE.search(client.get("/analyses/new").text)
    assert token
    return client.post(
        "/analyses",
        data={"patient": "P-7", "_csrf_token": token.group(1)},
        files=[("images", (name, data, "image/jpeg")) for name, data in files],
        headers=headers,
        follow_redirects=False,
    )


@pytest.fixture(scope="module")
def analysis(browser: httpx.Client, fixture_images: list[tuple[Path, str]]) -> str:
    r = upload(browser, [("a.jpg", fixture_images[0][0].read_bytes())])
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def test_pages_and_files_with_patient_data_are_never_cached(
    browser: httpx.Client, analysis: str
) -> None:
    paths = ["/dashboard", "/history", analysis, f"{analysis}/image", f"{analysis}/report.pdf"]
    for path in paths:
        r = browser.get(path)
        assert r.status_code == 200, (path, r.status_code)
        assert "no-store" in r.headers.get("cache-control", ""), path
    assert "no-store" not in browser.get("/static/app.css").headers.get("cache-control", "")


def test_hsts_only_over_https(clinic: tuple[Server, Path]) -> None:
    server, _ = clinic
    plain = httpx.get(server.url + "/health/live")
    assert "strict-transport-security" not in plain.headers
    # Behind a TLS proxy on this host, which uvicorn trusts by default (127.0.0.1).
    tls = httpx.get(server.url + "/health/live", headers={"X-Forwarded-Proto": "https"})
    assert tls.headers["strict-transport-security"].startswith("max-age=")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_directory_is_private_under_the_default_umask(
    clinic: tuple[Server, Path], analysis: str, browser: httpx.Client
) -> None:
    _, data = clinic
    assert browser.get(f"{analysis}/report.pdf").status_code == 200  # a stored PDF too
    database = data / "app.sqlite3"
    assert mode(database) == 0o600
    for extra in (data / "app.sqlite3-wal", data / "app.sqlite3-shm"):
        if extra.exists():
            assert mode(extra) == 0o600, extra
    images = data / "images"
    assert mode(images) == 0o700
    stored = list(images.iterdir())
    assert len(stored) >= 2  # the image and its report
    assert {mode(f) for f in stored} == {0o600}


def test_many_files_or_a_long_file_name_is_not_called_too_large(
    browser: httpx.Client, fixture_images: list[tuple[Path, str]]
) -> None:
    json = {"Accept": "application/json"}
    r = upload(browser, [(f"{i}.jpg", b"x") for i in range(1_500)], **json)
    assert r.status_code == 400, r.text
    assert "too many parts" in r.json()["detail"]
    r = upload(browser, [("n" * 10_000 + ".jpg", fixture_images[0][0].read_bytes())], **json)
    assert r.status_code == 400, r.text
    assert "file name" in r.json()["detail"]
