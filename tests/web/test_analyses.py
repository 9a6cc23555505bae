"""Uploads, results, history, reports, deletion, encryption at rest and ownership (IDOR)."""

from __future__ import annotations

import asyncio
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image, UnidentifiedImageError
from pypdf import PdfReader

from app.auth.admin import create_api_token, set_role
from app.config import Settings
from app.db.engine import bind, make_engine, start, stop
from app.db.tables import Analysis
from app.inference.spec import HAM10000_LABELS
from app.main import create_app
from app.storage import EncryptedStore, parse_key

from .conftest import CSRF_RE, FAST_HASHER, PASSWORD, csrf, login, make_client, register, upload
from .live import live_server

UUID_RE = re.compile(r"/analyses/([0-9a-f-]{36})$")


@pytest.fixture
def jpeg(fixture_images: list[tuple[Path, str]]) -> bytes:
    return fixture_images[0][0].read_bytes()


def _analysis_id(location: str) -> str:
    match = UUID_RE.search(location)
    assert match, location
    return match.group(1)


def _files(settings: Settings) -> list[Path]:
    return sorted(p for p in settings.images_dir.glob("*") if p.is_file())


def test_analysis_result_page_and_pdf(
    client: TestClient[Litestar], sqlite_settings: Settings, jpeg: bytes
) -> None:
    register(client, "alice")
    location = upload(client, "Jane Roe 1957", [("lesion.jpg", jpeg)])
    page = client.get(location)
    assert page.status_code == 200
    text = page.text
    assert "Jane Roe 1957" in text
    assert "a second opinion, not a diagnosis" in text.lower()
    assert re.search(r'text-bg-(danger|warning|success)" id="risk-group"', text)
    assert "Melanoma flag" in text and "tiny-test-model" in text
    assert text.count("<rect") >= 7  # one bar per class

    analysis_id = _analysis_id(location)
    r = client.get(f"/analyses/{analysis_id}/report.pdf?download=true")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("attachment;")
    pdf_text = PdfReader(io.BytesIO(r.content)).pages[0].extract_text()
    flat = " ".join(pdf_text.split())
    assert "Jane Roe 1957" in flat
    api = client.get(f"/analyses/{analysis_id}/report.pdf").headers["content-disposition"]
    assert api.startswith("inline;")
    # Class, all 7 probabilities and the model's sha256, as stored.
    token = create_api_token(sqlite_settings, "alice")
    row = client.get(
        f"/api/v1/analyses/{analysis_id}", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert f"({row['predicted_class']})" in flat
    for label in HAM10000_LABELS:
        assert re.search(rf"\b{label}\b.*?{row['probabilities'][label] * 100:.2f}%", flat), label
    assert row["model_sha256"] in flat
    assert row["image_sha256"] in flat
    assert "second opinion, not a diagnosis" in flat
    assert "second opinion, not a diagnosis" in row["disclaimer"]  # the stored-analysis API too


def test_analysis_report_rebuilt_when_missing(
    client: TestClient[Litestar], sqlite_settings: Settings, jpeg: bytes
) -> None:
    register(client, "alice")
    analysis_id = _analysis_id(upload(client, "P", [("a.jpg", jpeg)]))
    first = client.get(f"/analyses/{analysis_id}/report.pdf")
    pdfs = [p for p in _files(sqlite_settings) if p.suffix == ".pdf"]
    assert len(pdfs) == 1
    pdfs[0].unlink()
    again = client.get(f"/analyses/{analysis_id}/report.pdf")
    assert again.status_code == 200 and again.content.startswith(b"%PDF")
    assert len([p for p in _files(sqlite_settings) if p.suffix == ".pdf"]) == 1
    assert first.content.startswith(b"%PDF")


def test_analysis_image_encrypted_at_rest(
    client: TestClient[Litestar], sqlite_settings: Settings, jpeg: bytes
) -> None:
    register(client, "alice")
    analysis_id = _analysis_id(upload(client, "P", [("../../etc/passwd.jpg", jpeg)]))
    files = _files(sqlite_settings)
    assert len(files) == 1 and "passwd" not in files[0].name  # random name, not the upload's
    blob = files[0].read_bytes()
    assert not blob.startswith(b"\xff\xd8\xff") and jpeg[100:200] not in blob
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(blob))
    store = EncryptedStore(sqlite_settings.images_dir, parse_key(sqlite_settings.storage_key or ""))
    assert store.get(files[0].name) == jpeg
    served = client.get(f"/analyses/{analysis_id}/image")
    assert served.content == jpeg and "no-store" in served.headers["cache-control"]
    assert not list(sqlite_settings.images_dir.glob(".*.tmp"))  # write-then-rename left nothing


def test_analysis_delete_removes_files(
    client: TestClient[Litestar], sqlite_settings: Settings, jpeg: bytes
) -> None:
    register(client, "alice")
    analysis_id = _analysis_id(upload(client, "P", [("a.jpg", jpeg)]))
    client.get(f"/analyses/{analysis_id}/report.pdf")
    assert len(_files(sqlite_settings)) == 2  # image + report
    r = client.post(
        f"/analyses/{analysis_id}/delete",
        data={"_csrf_token": csrf(client, "/history")},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert _files(sqlite_settings) == []
    assert client.get(f"/analyses/{analysis_id}").status_code == 404


def test_analysis_idor_returns_404(sqlite_settings: Settings, jpeg: bytes) -> None:
    app = create_app(sqlite_settings)
    app.state.password_hasher = FAST_HASHER
    with TestClient(app=app) as alice:
        register(alice, "alice")
        analysis_id = _analysis_id(upload(alice, "Alice's patient", [("a.jpg", jpeg)]))
        bob = TestClient(app=app)  # shares the running app, has its own cookies
        register(bob, "bob")
        token = csrf(bob, "/history")
        for path in (
            f"/analyses/{analysis_id}",
            f"/analyses/{analysis_id}/image",
            f"/analyses/{analysis_id}/report.pdf",
        ):
            assert bob.get(path).status_code == 404, path
        r = bob.post(f"/analyses/{analysis_id}/delete", data={"_csrf_token": token})
        assert r.status_code == 404
        bob_token = create_api_token(sqlite_settings, "bob")
        r = bob.get(
            f"/api/v1/analyses/{analysis_id}", headers={"Authorization": f"Bearer {bob_token}"}
        )
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert bob.get(
            "/api/v1/analyses", headers={"Authorization": f"Bearer {bob_token}"}
        ).json() == {"analyses": []}
        assert "Alice&#39;s patient" not in bob.get("/history").text
        # Still there for its owner.
        assert alice.get(f"/analyses/{analysis_id}").status_code == 200


def test_analysis_batch_history_filters_and_pagination(
    client: TestClient[Litestar], sqlite_settings: Settings, fixture_images: list[tuple[Path, str]]
) -> None:
    register(client, "alice")
    images = [(p.name, p.read_bytes()) for p, _ in fixture_images[:3]]
    location = upload(client, "Batch Patient", images)
    assert location.startswith("/history?batch=")
    batch_page = client.get(location).text
    assert batch_page.count("<td>Batch Patient</td>") == 3
    assert "3 images analysed for Batch Patient" in batch_page
    upload(client, "Other Person", images[:1])
    page = client.get("/history?patient=other")
    assert "Other Person" not in page.text  # exact matches only: the names are sealed
    page = client.get("/history?patient=other%20%20PERSON")  # case and spacing ignored
    assert "Other Person" in page.text and "Batch Patient" not in page.text
    other_id = re.search(r'href="/analyses/([0-9a-f-]{36})"', page.text)
    assert other_id
    token = create_api_token(sqlite_settings, "alice")
    row = client.get(
        f"/api/v1/analyses/{other_id.group(1)}", headers={"Authorization": f"Bearer {token}"}
    ).json()
    same = client.get(f"/history?dx={row['predicted_class']}").text
    assert "<td>Other Person</td>" in same
    different = next(c for c in HAM10000_LABELS if c != row["predicted_class"])
    assert "<td>Other Person</td>" not in client.get(f"/history?dx={different}").text
    by_class = client.get("/history?dx=nosuchclass").text  # unknown class: no filter, no error
    assert by_class.count("<td>Batch Patient</td>") == 3
    r = client.get("/history?page=99")
    assert r.status_code == 200 and "4 analyses" in r.text


def test_analysis_upload_validation(client: TestClient[Litestar], jpeg: bytes) -> None:
    register(client, "alice")
    token = csrf(client, "/analyses/new")
    # A multipart form without any file part: a clear 400, never Litestar's 500.
    r = client.post(
        "/analyses",
        data={"patient": "P", "_csrf_token": token},
        files=[("other", ("x.txt", b"x", "text/plain"))],
    )
    assert r.status_code == 400 and "Choose at least one image" in r.text
    r = client.post(
        "/analyses",
        data={"patient": "P", "_csrf_token": token},
        files=[("images", ("x.gif", b"GIF89a....", "image/gif"))],
    )
    assert r.status_code == 400 and "only JPEG, PNG and DICOM" in r.text
    r = client.post(
        "/analyses",
        data={"patient": "", "_csrf_token": token},
        files=[("images", ("a.jpg", jpeg, "image/jpeg"))],
    )
    assert r.status_code == 400 and "patient" in r.text


def test_analysis_pages_need_login(client: TestClient[Litestar]) -> None:
    for path in ("/dashboard", "/history", "/analyses/new", "/tokens", "/audit"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/login?next={path}", path
    # A form posted after the session expired: back to the form's page, never to the
    # POST-only URL (which answered 405 after logging in).
    token = csrf(client)
    delete = f"/analyses/{'0' * 8}-0000-0000-0000-{'0' * 12}/delete"
    for referer, expected in (
        ("http://testserver.local/history?page=2", "/login?next=/history%3Fpage%3D2"),
        ("https://elsewhere.example/history", "/login"),
        (None, "/login"),
    ):
        headers = {"referer": referer} if referer else {}
        r = client.post(
            delete, data={"_csrf_token": token}, headers=headers, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == expected, referer


def test_analysis_dashboard_and_admin_audit(
    client: TestClient[Litestar], sqlite_settings: Settings, jpeg: bytes
) -> None:
    register(client, "alice")
    upload(client, "P", [("a.jpg", jpeg)])
    dash = client.get("/dashboard")
    assert dash.status_code == 200 and '<div class="h3 mb-0" id="total">1</div>' in dash.text
    assert dash.text.count("<svg") == 2
    assert client.get("/audit").status_code == 403
    set_role(sqlite_settings, "alice", "admin")
    audit = client.get("/audit")
    assert audit.status_code == 200
    for action in ("register", "analysis_created"):
        assert action in audit.text


def test_api_token_guard(client: TestClient[Litestar], sqlite_settings: Settings) -> None:
    register(client, "alice")
    assert client.get("/api/v1/analyses").status_code == 401
    bad = client.get("/api/v1/analyses", headers={"Authorization": "Bearer slk_nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    page = client.post("/tokens", data={"name": "station", "_csrf_token": csrf(client, "/tokens")})
    token = re.search(r'id="new-token"[^>]*>([^<]+)<', page.text)
    assert token
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    assert client.get("/api/v1/analyses", headers=headers).status_code == 200
    # The service's prediction API is behind the same guard (settings.api_auth).
    assert (
        client.post("/api/v1/predict", files={"image": ("a.jpg", b"x", "image/jpeg")}).status_code
        == 401
    )
    token_id = re.search(r'action="/tokens/(\d+)/revoke"', page.text)
    assert token_id
    client.post(
        f"/tokens/{token_id.group(1)}/revoke", data={"_csrf_token": csrf(client, "/tokens")}
    )
    assert client.get("/api/v1/analyses", headers=headers).status_code == 401


def _register_http(client: httpx.Client, username: str) -> None:
    page = client.get("/register")
    match = CSRF_RE.search(page.text)
    assert match
    r = client.post(
        "/register",
        data={
            "username": username,
            "password": PASSWORD,
            "confirm": PASSWORD,
            "_csrf_token": match.group(1),
        },
    )
    assert r.status_code == 200, r.text


def _upload_http(client: httpx.Client, patient: str, data: bytes) -> str:
    page = client.get("/analyses/new")
    match = CSRF_RE.search(page.text)
    assert match
    r = client.post(
        "/analyses",
        data={"patient": patient, "_csrf_token": match.group(1)},
        files=[("images", (f"{patient}.jpg", data, "image/jpeg"))],
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return _analysis_id(r.headers["location"])


def test_analysis_concurrent_uploads_do_not_mix(
    db_settings: Settings, fixture_images: list[tuple[Path, str]]
) -> None:
    """Two users upload at once through a real server; each sees only their own records."""
    app = create_app(db_settings)
    app.state.password_hasher = FAST_HASHER
    images = [p.read_bytes() for p, _ in fixture_images[:4]]
    with (
        live_server(app) as url,
        httpx.Client(base_url=url, follow_redirects=True) as alice,
        httpx.Client(base_url=url, follow_redirects=True) as bob,
        ThreadPoolExecutor(8) as pool,
    ):
        _register_http(alice, "alice")
        _register_http(bob, "bob")

        # One client per thread at a time (httpx cookie jars are not thread-safe).
        def run(who: str, client: httpx.Client) -> list[str]:
            return [_upload_http(client, f"{who}-patient-{i}", images[i % 4]) for i in range(6)]

        futures = {who: pool.submit(run, who, c) for who, c in (("alice", alice), ("bob", bob))}
        ids = {who: f.result() for who, f in futures.items()}
        assert len(set(ids["alice"]) | set(ids["bob"])) == 12
        for who, client, other in (("alice", alice, "bob"), ("bob", bob, "alice")):
            for analysis_id in ids[who]:
                page = client.get(f"/analyses/{analysis_id}")
                assert page.status_code == 200 and f"{who}-patient-" in page.text
            assert client.get(f"/analyses/{ids[other][0]}").status_code == 404
            history = client.get("/history").text
            assert history.count(f"<td>{who}-patient-") == 6
            assert f"{other}-patient-" not in history


def test_concurrent_report_requests_leave_one_pdf_that_delete_removes(
    db_settings: Settings, jpeg: bytes
) -> None:
    """Several tabs asking for a report at once: one PDF is kept, and deleting removes it."""
    app = create_app(db_settings)
    app.state.password_hasher = FAST_HASHER
    with live_server(app) as url, httpx.Client(base_url=url, follow_redirects=True) as alice:
        _register_http(alice, "alice")
        analysis_id = _upload_http(alice, "P", jpeg)
        # One client per thread (httpx cookie jars are not thread-safe), all logged in as alice.
        tabs = [httpx.Client(base_url=url, cookies=alice.cookies) for _ in range(4)]
        with ThreadPoolExecutor(len(tabs)) as pool:
            answers = list(
                pool.map(lambda tab: tab.get(f"/analyses/{analysis_id}/report.pdf"), tabs)
            )
        for tab in tabs:
            tab.close()
        assert all(r.status_code == 200 and r.content.startswith(b"%PDF") for r in answers)
        assert len([p for p in _files(db_settings) if p.suffix == ".pdf"]) == 1
        token = CSRF_RE.search(alice.get("/history").text)
        assert token
        r = alice.post(f"/analyses/{analysis_id}/delete", data={"_csrf_token": token.group(1)})
        assert r.status_code == 200
        assert _files(db_settings) == []


def test_nul_characters_in_form_fields_are_refused_not_a_server_error(
    db_settings: Settings, jpeg: bytes
) -> None:
    """PostgreSQL rejects NUL in text; the forms answer 400 before it gets there."""
    with make_client(db_settings) as client:
        r = client.post(
            "/login",
            data={"username": "alice\x00", "password": "x", "_csrf_token": csrf(client)},
        )
        assert r.status_code == 400 and "NUL" in r.text
        register(client, "alice")
        r = client.post(
            "/analyses",
            data={"patient": "Jane\x00Doe", "_csrf_token": csrf(client, "/analyses/new")},
            files=[("images", ("a.jpg", jpeg, "image/jpeg"))],
            follow_redirects=False,
        )
        assert r.status_code == 400 and "NUL" in r.text
        assert _files(db_settings) == []
        # A control character in a file name is dropped from the shown name, not fatal.
        # (Built by hand: httpx would percent-encode them.)
        boundary = "nul-test-boundary"
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="_csrf_token"\r\n\r\n'
                f"{csrf(client, '/analyses/new')}\r\n".encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="patient"\r\n\r\n'
                "Jane Doe\r\n".encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
                'filename="le\x00sion\x07.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode(),
                jpeg,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        r = client.post(
            "/analyses",
            content=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        analysis_id = _analysis_id(r.headers["location"])
        token = create_api_token(db_settings, "alice")
        row = client.get(
            f"/api/v1/analyses/{analysis_id}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert row["original_filename"] == "lesion.jpg"
        for query in ({"patient": "Jane\x00"}, {"batch": "\x00"}):  # the history filters
            r = client.get("/history", params=query)
            assert r.status_code == 400 and "NUL" in r.text, query
        # A text field that is not UTF-8: the form parser's error is the client's, a 400.
        latin1 = body.replace(b"Jane Doe", "Jos\u00e9".encode("latin-1"))
        r = client.post(
            "/analyses",
            content=latin1,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 400 and "UTF-8" in r.text
        assert client.get("/health/live").status_code == 200


def test_history_patient_search_is_exact_and_the_database_names_no_patient(
    db_settings: Settings, jpeg: bytes
) -> None:
    # Patient identifiers are sealed at rest: search is an exact match (case and spacing aside)
    # on a keyed hash, so wildcards match nothing, and the database holds no name in clear.
    with make_client(db_settings) as client:
        register(client, "alice")
        for patient in ("Anna 50% off", "AB_12", "ABX12", "back\\slash"):
            upload(client, patient, [("a.jpg", jpeg)])

        def found(query: str) -> set[str]:
            page = client.get("/history", params={"patient": query}).text
            return set(re.findall(r"<td>([^<]*)</td>", page)) & {
                "Anna 50% off",
                "AB_12",
                "ABX12",
                "back\\slash",
            }

        assert found("%") == set()
        assert found("AB_1") == set()
        assert found("ab_12") == {"AB_12"}  # case-insensitive on both databases
        assert found("back\\slash") == {"back\\slash"}
        assert found("  anna   50%  OFF ") == {"Anna 50% off"}
        assert found("") == {"Anna 50% off", "AB_12", "ABX12", "back\\slash"}

    async def stored() -> list[dict[str, Any]]:
        engine = make_engine(db_settings)
        bind(engine)
        await start(engine)
        try:
            return await Analysis.select().run()
        finally:
            await stop(engine)

    rows = asyncio.run(stored())
    assert len(rows) == 4
    dump = repr(rows)
    for clear in ("Anna", "AB_12", "ABX12", "slash", "a.jpg"):
        assert clear not in dump  # neither the patient nor the file name


def test_batch_skips_are_one_short_message(client: TestClient[Litestar], jpeg: bytes) -> None:
    # Flash messages ride in the session cookie: one per skipped file made 24 KB of cookies
    # for a 32-file batch with long names (browsers keep 4 KB per cookie). This app: 8 a batch.
    register(client, "alice")
    bad = [(f"{i:02d}{'é' * 200}.jpg", b"not an image at all") for i in range(7)]
    location = upload(client, "Pat", [("a.jpg", jpeg), *bad])
    assert sum(len(value) for value in client.cookies.values()) < 4096
    page = client.get(location).text
    assert "Skipped 7 file(s): 00" in page and "; and 4 more" in page


def test_dicom_upload_is_analysed_shown_and_reported(
    client: TestClient[Litestar], jpeg: bytes, make_dicom: Any
) -> None:
    register(client, "alice")
    location = upload(client, "Dicom Patient", [("lesion.dcm", make_dicom(jpeg))])
    assert "Dicom Patient" in client.get(location).text
    analysis_id = _analysis_id(location)
    shown = client.get(f"/analyses/{analysis_id}/image")  # browsers cannot show DICOM
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(shown.content)).size == (600, 450)
    assert client.get(f"/analyses/{analysis_id}/explanation.png").status_code == 200
    pdf = PdfReader(io.BytesIO(client.get(f"/analyses/{analysis_id}/report.pdf").content))
    # the thumbnail (not the "damaged image" note) and the explanation beside it
    assert len(pdf.pages[0].images) == 2
    assert "damaged" not in pdf.pages[0].extract_text()


def test_rows_from_before_sealing_are_sealed_at_start(
    sqlite_settings: Settings, jpeg: bytes
) -> None:
    with make_client(sqlite_settings) as client:
        register(client, "alice")
        location = upload(client, "Someone", [("a.jpg", jpeg)])

    async def run(query: Any) -> Any:
        engine = make_engine(sqlite_settings)
        bind(engine)
        await start(engine)
        try:
            return await query.run()
        finally:
            await stop(engine)

    # What a row written before the sealing migration looks like: names in clear.
    legacy = {
        Analysis.patient: "Legacy Name",
        Analysis.original_filename: "old-scan.jpg",
        Analysis.patient_sealed: "",
        Analysis.patient_index: "",
        Analysis.filename_sealed: "",
    }
    asyncio.run(run(Analysis.update(legacy, force=True)))
    with make_client(sqlite_settings) as client:  # start-up seals it
        login(client, "alice")
        page = client.get(location).text
        assert "Legacy Name" in page and "old-scan.jpg" in page
        assert "Legacy Name" in client.get("/history?patient=legacy%20name").text
    (row,) = asyncio.run(run(Analysis.select()))
    assert row["patient"] == "" and row["original_filename"] == ""
    assert row["patient_sealed"].startswith("s1:") and "Legacy" not in repr(row)
