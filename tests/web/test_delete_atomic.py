"""Deleting an analysis is all or nothing: the row, its files and the audit event go together."""

from __future__ import annotations

from pathlib import Path

from app.auth.admin import set_role
from app.config import Settings
from tests.hardening.mounts import remount, tmpfs

from .conftest import csrf, make_client, register, upload


def test_a_delete_on_a_read_only_disk_changes_nothing_and_a_retry_works(
    sqlite_settings: Settings, fixture_images: list[tuple[Path, str]]
) -> None:
    images = sqlite_settings.data_dir / "images"
    with tmpfs(images, "16m"), make_client(sqlite_settings) as client:
        register(client, "alice")
        location = upload(client, "Pat Delete", [("a.jpg", fixture_images[0][0].read_bytes())])
        client.get(f"{location}/report.pdf")  # a stored report too
        stored = sorted(p.name for p in images.iterdir())
        assert len(stored) == 2

        remount(images, "ro")
        try:
            r = client.post(
                f"{location}/delete",
                data={"_csrf_token": csrf(client, location)},
                follow_redirects=False,
            )
        finally:
            remount(images, "rw")
        assert r.status_code == 503 and "not deleted" in r.text
        assert client.get(location).status_code == 200  # kept, whole
        assert sorted(p.name for p in images.iterdir()) == stored
        set_role(sqlite_settings, "alice", "admin")
        assert "analysis_deleted" not in client.get("/audit").text

        r = client.post(
            f"{location}/delete",
            data={"_csrf_token": csrf(client, location)},
            follow_redirects=False,
        )
        assert r.status_code == 303
        assert client.get(location).status_code == 404
        assert list(images.iterdir()) == []
        client.get("/history")  # shows (and so clears) the flash message that names the patient
        audit = client.get("/audit").text
        assert "analysis_deleted" in audit and location.rsplit("/", 1)[1] in audit
        assert "Pat Delete" not in audit  # the event names the analysis, not the patient
