"""Finding "orphans" (low): encrypted files left with no row (kill -9 between the write and the
insert) are reported and removed, by `python -m app storage check [--repair]` and at start-up;
rows whose image is missing are reported. Files younger than an hour are never removed: they may
be uploads whose row is being inserted."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.hardening.server import REPO, Server, running_server

CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')
HOURS_AGO = time.time() - 2 * 3600


def upload_two(server: Server, lesion: bytes) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        token = CSRF_RE.search(client.get("/register").text)
        assert token
        password = "correct horse battery staple"
        form = {"username": "sweeper", "password": password, "confirm": password}
        r = client.post("/register", data={**form, "_csrf_token": token.group(1)})
        assert r.status_code in (200, 303), r.text
        for patient in ("P-1", "P-2"):
            token = CSRF_RE.search(client.get("/analyses/new").text)
            assert token
            r = client.post(
                "/analyses",
                data={"patient": patient, "_csrf_token": token.group(1)},
                files=[("images", ("a.jpg", lesion, "image/jpeg"))],
                follow_redirects=False,
            )
            assert r.status_code == 303, r.text


def plant(images: Path, name: str, old: bool) -> Path:
    path = images / name
    path.write_bytes(b"SLE1" + secrets.token_bytes(64))
    if old:
        os.utime(path, (HOURS_AGO, HOURS_AGO))
    return path


def storage_check(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APP_DEV": "1", "APP_DATA_DIR": str(data)}
    return subprocess.run(
        [sys.executable, "-m", "app", "storage", "check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_orphans_are_reported_repaired_and_swept_at_start_up(
    tmp_path: Path, fixture_images: list[tuple[Path, str]]
) -> None:
    data = tmp_path / "data"
    images = data / "images"
    with running_server(data) as server:
        upload_two(server, fixture_images[0][0].read_bytes())
    stored = sorted(images.iterdir())
    assert len(stored) == 2
    lost = stored[0]
    lost.unlink()  # a row whose image is gone
    old_orphan = plant(images, secrets.token_hex(16) + ".jpeg", old=True)
    old_tmp = plant(images, f".{secrets.token_hex(16)}.png.{secrets.token_hex(4)}.tmp", old=True)
    young = plant(images, secrets.token_hex(16) + ".png", old=False)
    foreign = plant(images, "notes.txt", old=True)

    report = storage_check(data)
    assert report.returncode == 1, report.stdout + report.stderr
    assert f"orphan file {old_orphan.name} (kept)" in report.stdout
    assert f"unfinished write {old_tmp.name} (kept)" in report.stdout
    assert f"image {lost.name} is missing" in report.stdout
    assert old_orphan.exists() and old_tmp.exists()

    repaired = storage_check(data, "--repair")
    assert f"orphan file {old_orphan.name} (removed)" in repaired.stdout, repaired.stdout
    assert not old_orphan.exists() and not old_tmp.exists()
    assert young.exists() and foreign.exists() and stored[1].exists()
    assert repaired.returncode == 1  # the missing image cannot be repaired, only reported

    crashed = plant(images, secrets.token_hex(16) + ".jpeg", old=True)
    with running_server(data) as server:  # the start-up sweep
        assert not crashed.exists()
        assert "storage check at start-up" in server.output()
        assert f"its image {lost.name} is missing" in server.output()
    assert young.exists() and stored[1].exists()
