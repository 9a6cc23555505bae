"""Finding "disk full" (low): a full disk is 507 storage_full and a read-only one a 503, never
500 "internal error"; nothing partial is left and the server recovers by itself. The image
store sits on a small tmpfs mounted for the test (skips where mounting is not allowed); the
SQLite file stays on the ordinary disk (on tmpfs, SQLite's WAL index cannot even be read when
the disk is full, which reports as database_unavailable)."""

from __future__ import annotations

import contextlib
import errno
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.hardening.mounts import tmpfs
from tests.hardening.server import running_server

CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')
JSON = {"Accept": "application/json"}


def small_disk(mount: Path) -> contextlib.AbstractContextManager[Path]:
    """A 4 MB tmpfs at ``mount`` (skips the test where mounting is not allowed)."""
    return tmpfs(mount, "4m")


def fill(disk: Path) -> Path:
    """Write until the disk is full; returns the filler to delete."""
    filler = disk / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    with pytest.raises(OSError) as info:
        (disk / "probe").write_bytes(b"\0" * 65536)
    assert info.value.errno == errno.ENOSPC
    (disk / "probe").unlink(missing_ok=True)
    return filler


def upload(client: httpx.Client, data: bytes) -> httpx.Response:
    page = client.get("/analyses/new")
    token = CSRF_RE.search(page.text)
    assert token, (page.status_code, page.text[:500])
    return client.post(
        "/analyses",
        data={"patient": "P-9", "_csrf_token": token.group(1)},
        files=[("images", ("a.jpg", data, "image/jpeg"))],
        headers=JSON,
        follow_redirects=False,
    )


def test_full_or_read_only_disk_is_not_a_500(
    tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    lesion = fixture_images[0][0].read_bytes()
    data = tmp_path / "data"
    images = data / "images"
    with (
        running_server(data) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        small_disk(images) as disk,
    ):
        token = CSRF_RE.search(client.get("/register").text)
        assert token
        password = "correct horse battery staple"
        form = {"username": "diskfull", "password": password, "confirm": password}
        r = client.post("/register", data={**form, "_csrf_token": token.group(1)})
        assert r.status_code in (200, 303), r.text

        filler = fill(disk)
        r = upload(client, lesion)  # was: 500 "internal error"
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "storage_full" and "disk is full" in r.json()["detail"]
        assert [p.name for p in images.iterdir()] == ["filler"]  # no partial file left

        filler.unlink()
        assert upload(client, lesion).status_code == 303  # recovers without a restart

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        try:
            r = upload(client, lesion)
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "storage_read_only", r.text
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
