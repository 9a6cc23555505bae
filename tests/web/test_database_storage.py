"""APP_STORAGE=database (issue 18): the encrypted images and reports in the stored_blob table,
on a SQLite file and on real PostgreSQL; deletes in the delete's transaction; reports rebuilt
with the same text; `python -m app storage migrate --to database` moves an install, twice."""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from app.__main__ import storage_migrate
from app.config import Settings
from app.db import engine as db_engine
from app.storage import MAGIC

from .conftest import login, make_client, register, upload


@pytest.fixture
def jpeg(fixture_images: list[tuple[Path, str]]) -> bytes:
    return fixture_images[0][0].read_bytes()


def _sql(settings: Settings, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run SQL on the settings' database in a fresh engine (the app's own is not touched)."""

    async def run() -> list[dict[str, Any]]:
        engine = db_engine.make_engine(settings)
        await db_engine.start(engine)
        try:
            return await engine.run_querystring(_querystring(sql, args))  # type: ignore[no-any-return]
        finally:
            await db_engine.stop(engine)

    return asyncio.run(run())


def _querystring(sql: str, args: tuple[Any, ...]) -> Any:
    from piccolo.querystring import QueryString

    return QueryString(sql, *args)


def _text(pdf: bytes) -> str:
    return " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())


def _id(location: str) -> str:
    return location.rstrip("/").split("/")[-1]


def _files(settings: Settings) -> list[Path]:
    root = settings.images_dir
    return sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []


@pytest.fixture
def database_storage(db_settings: Settings) -> Settings:
    return replace(db_settings, storage="database")


def test_images_and_reports_live_in_the_database(database_storage: Settings, jpeg: bytes) -> None:
    settings = database_storage
    with make_client(settings) as client:
        register(client, "alice")
        analysis = _id(upload(client, "Jane Roe", [("lesion.jpg", jpeg)]))
        image = client.get(f"/analyses/{analysis}/image")
        assert image.status_code == 200 and image.content == jpeg
        pdf = client.get(f"/analyses/{analysis}/report.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        assert "Jane Roe" in _text(pdf.content)
    assert _files(settings) == []  # nothing on this replica's disk
    rows = _sql(settings, "SELECT name, data, sha256, size FROM stored_blob ORDER BY name")
    assert len(rows) == 2  # the image and the report
    for row in rows:
        data = bytes(row["data"])
        assert data.startswith(MAGIC) and jpeg not in data  # encrypted, not the upload
        assert row["size"] == len(data) and row["sha256"] == hashlib.sha256(data).hexdigest()
    (image_row,) = _sql(settings, "SELECT image_path, report_path FROM analysis")
    assert {r["name"] for r in rows} == {image_row["image_path"], image_row["report_path"]}


def test_altered_bytes_are_refused_not_shown(database_storage: Settings, jpeg: bytes) -> None:
    settings = database_storage
    with make_client(settings) as client:
        register(client, "bob")
        analysis = _id(upload(client, "P", [("a.jpg", jpeg)]))
        (row,) = _sql(settings, "SELECT image_path FROM analysis")
        (blob,) = _sql(settings, "SELECT data FROM stored_blob WHERE name = {}", row["image_path"])
        flipped = bytearray(blob["data"])
        flipped[-1] ^= 1
        # hash and size rewritten too: the AES-GCM tag still catches it
        _sql(
            settings,
            "UPDATE stored_blob SET data = {}, sha256 = {} WHERE name = {}",
            bytes(flipped),
            hashlib.sha256(bytes(flipped)).hexdigest(),
            row["image_path"],
        )
        r = client.get(f"/analyses/{analysis}/image")
        assert r.status_code == 500 and jpeg not in r.content


def test_a_delete_removes_the_blobs_in_its_own_transaction(
    database_storage: Settings, jpeg: bytes
) -> None:
    """The audit insert, after the blob deletes, is made to fail by a real trigger: the whole
    delete rolls back, blobs included; without the trigger it goes through, blobs included."""
    settings = database_storage
    postgres = bool(settings.database_url)
    with make_client(settings) as client:
        register(client, "carol")
        analysis = _id(upload(client, "P", [("a.jpg", jpeg)]))
        assert client.get(f"/analyses/{analysis}/report.pdf").status_code == 200
        token = client.get(f"/analyses/{analysis}").text.split('name="_csrf_token" value="')[1]
        token = token.split('"')[0]
        if postgres:
            _sql(
                settings,
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'audit refused'; END $$ LANGUAGE plpgsql",
            )
            _sql(
                settings,
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                "FOR EACH ROW WHEN (NEW.action = 'analysis_deleted') EXECUTE FUNCTION refuse()",
            )
        else:
            _sql(
                settings,
                "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event "
                "WHEN NEW.action = 'analysis_deleted' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
        r = client.post(
            f"/analyses/{analysis}/delete", data={"_csrf_token": token}, follow_redirects=False
        )
        assert r.status_code >= 500
        assert len(_sql(settings, "SELECT name FROM stored_blob")) == 2  # rolled back
        assert client.get(f"/analyses/{analysis}/image").content == jpeg
        _sql(settings, "DROP TRIGGER no_audit" + (" ON audit_event" if postgres else ""))
        r = client.post(
            f"/analyses/{analysis}/delete", data={"_csrf_token": token}, follow_redirects=False
        )
        assert r.status_code == 303, r.text
        assert _sql(settings, "SELECT name FROM stored_blob") == []
        assert client.get(f"/analyses/{analysis}/image").status_code == 404


@pytest.mark.parametrize("storage", ["filesystem", "database"])
def test_a_missing_report_is_rebuilt_with_the_same_text(
    sqlite_settings: Settings, jpeg: bytes, storage: str
) -> None:
    """A replica without the report (another replica's disk, a lost blob) rebuilds it from the
    record: the same text, stored again."""
    settings = replace(sqlite_settings, storage=storage)
    with make_client(settings) as client:
        register(client, "dave")
        analysis = _id(upload(client, "Ångström Patient", [("a.jpg", jpeg)]))
        first = client.get(f"/analyses/{analysis}/report.pdf").content
        (row,) = _sql(settings, "SELECT report_path FROM analysis")
        if storage == "database":
            _sql(settings, "DELETE FROM stored_blob WHERE name = {}", row["report_path"])
        else:
            (settings.images_dir / row["report_path"]).unlink()
        second = client.get(f"/analyses/{analysis}/report.pdf").content
        assert second.startswith(b"%PDF") and "Ångström Patient" in _text(second)
        assert _text(second) == _text(first)
        (again,) = _sql(settings, "SELECT report_path FROM analysis")
        assert again["report_path"] and again["report_path"] != row["report_path"]


def test_storage_migrate_moves_an_install_and_is_idempotent(
    db_settings: Settings, jpeg: bytes, fixture_images: list[tuple[Path, str]], capsys: Any
) -> None:
    settings = db_settings  # filesystem storage, as installs have today
    other = fixture_images[3][0].read_bytes()
    with make_client(settings) as client:
        register(client, "erin")
        one = _id(upload(client, "One", [("a.jpg", jpeg)]))
        two = _id(upload(client, "Two", [("b.jpg", other)]))
        report = client.get(f"/analyses/{one}/report.pdf").content
    assert len(_files(settings)) == 3
    assert storage_migrate(settings, "database") == 0
    assert "3 blob(s) copied" in capsys.readouterr().out
    assert storage_migrate(settings, "database") == 0  # again: nothing to do, nothing broken
    assert "0 blob(s) copied" in capsys.readouterr().out and len(_files(settings)) == 3
    # the files go away: the pages must now come from the database alone
    settings.images_dir.rename(settings.images_dir.with_name("images-moved-away"))
    moved = replace(settings, storage="database")
    with make_client(moved) as client:
        assert login(client, "erin") == 303
        assert client.get(f"/analyses/{one}/image").content == jpeg
        assert client.get(f"/analyses/{two}/image").content == other
        assert _text(client.get(f"/analyses/{one}/report.pdf").content) == _text(report)


def test_storage_migrate_refuses_files_under_another_key(
    sqlite_settings: Settings, jpeg: bytes, capsys: Any
) -> None:
    with make_client(sqlite_settings) as client:
        register(client, "fay")
        upload(client, "P", [("a.jpg", jpeg)])
    wrong = replace(sqlite_settings, storage_key="B" * 43 + "=")
    assert storage_migrate(wrong, "database") == 1
    assert "failed authentication" in capsys.readouterr().err
    assert _sql(sqlite_settings, "SELECT name FROM stored_blob") == []
