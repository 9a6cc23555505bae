"""Finding 3: a DICOM file with a missing or bogus Transfer Syntax UID is a 4xx with a reason,
on every entry point (predict, batch per item, explain, web form, both WebSockets)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.inference.preprocess import ImageError, decode_image, read_header
from tests.hardening.images import BAD_TRANSFER_SYNTAXES, with_transfer_syntax
from tests.hardening.server import Server

CASES = sorted(BAD_TRANSFER_SYNTAXES)


@pytest.fixture(scope="module")
def lesion(fixture_images: list[tuple[Path, str]]) -> bytes:
    return fixture_images[0][0].read_bytes()


@pytest.fixture(scope="module")
def bad_dicoms(make_dicom: Callable[..., bytes], lesion: bytes) -> dict[tuple[str, bool], bytes]:
    """(case, JPEG-compressed?) -> the malformed file."""
    return {
        (case, jpeg): with_transfer_syntax(make_dicom(lesion, jpeg=jpeg), uid)
        for case, (uid, _) in BAD_TRANSFER_SYNTAXES.items()
        for jpeg in (True, False)
    }


def assert_refused(response: httpx.Response, case: str) -> None:
    expected = BAD_TRANSFER_SYNTAXES[case][1]
    assert response.status_code == expected, (case, response.status_code, response.text)
    assert "Transfer Syntax" in response.json()["detail"], response.text


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("jpeg", [True, False], ids=["jpeg", "uncompressed"])
def test_bad_transfer_syntax_is_refused_in_process(
    bad_dicoms: dict[tuple[str, bool], bytes], case: str, jpeg: bool
) -> None:
    data = bad_dicoms[case, jpeg]
    for decode in (read_header, decode_image):
        with pytest.raises(ImageError, match="Transfer Syntax") as info:
            decode(data)
        assert info.value.status == BAD_TRANSFER_SYNTAXES[case][1]


@pytest.mark.parametrize("case", CASES)
def test_predict_and_explain_answer_4xx(
    server: Server, bad_dicoms: dict[tuple[str, bool], bytes], case: str
) -> None:
    for jpeg in (True, False):
        files = {"image": ("x.dcm", bad_dicoms[case, jpeg], "application/dicom")}
        assert_refused(httpx.post(server.url + "/api/v1/predict", files=files, timeout=30), case)
    files = {"image": ("x.dcm", bad_dicoms[case, True], "application/dicom")}
    assert_refused(httpx.post(server.url + "/api/v1/explain", files=files, timeout=30), case)


def test_batch_of_good_bad_good_reports_the_bad_item_only(
    server: Server, bad_dicoms: dict[tuple[str, bool], bytes], lesion: bytes
) -> None:
    bad = [bad_dicoms[case, True] for case in CASES]
    files = [("images", ("good.jpg", lesion, "image/jpeg"))]
    for i, data in enumerate(bad):
        files += [("images", (f"bad{i}.dcm", data, "application/dicom"))]
    files += [("images", ("good2.jpg", lesion, "image/jpeg"))]
    r = httpx.post(server.url + "/api/v1/predict/batch", files=files, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(bad) + 2 and body["failed"] == len(bad)
    items = body["results"]
    assert items[0]["result"]["label"] and items[-1]["result"]["label"]
    for item in items[1:-1]:
        assert item["error"] in ("bad_image", "unsupported_media_type"), item
        assert "Transfer Syntax" in item["detail"]


async def _frames(url: str, frames: list[bytes], headers: dict[str, str]) -> list[Any]:
    import websockets

    replies: list[Any] = []
    async with websockets.connect(url, additional_headers=headers) as ws:
        for frame in frames:
            await ws.send(frame)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    return replies


def test_kiosk_websocket_replies_with_the_reason_and_keeps_going(
    server: Server, bad_dicoms: dict[tuple[str, bool], bytes], lesion: bytes
) -> None:
    # Before: the socket closed with 4500 and no reason on the first bad frame.
    url = server.url.replace("http", "ws") + "/api/v1/live"
    replies = asyncio.run(_frames(url, [bad_dicoms["sop_class", True], lesion], {}))
    assert replies[0]["error"] == "bad_image" and "Transfer Syntax" in replies[0]["detail"]
    assert replies[1]["label"]


CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[httpx.Client]:
    """A logged-in web session (dev mode lets anyone register)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        token = CSRF_RE.search(client.get("/register").text)
        assert token, "no CSRF token on /register"
        password = "correct horse battery staple"
        r = client.post(
            "/register",
            data={
                "username": "dicomtester",
                "password": password,
                "confirm": password,
                "_csrf_token": token.group(1),
            },
        )
        assert r.status_code in (200, 303), r.text
        assert client.get("/dashboard", follow_redirects=False).status_code == 200
        yield client


def test_web_form_shows_the_reason(
    browser: httpx.Client, bad_dicoms: dict[tuple[str, bool], bytes], lesion: bytes
) -> None:
    token = CSRF_RE.search(browser.get("/analyses/new").text)
    assert token
    r = browser.post(
        "/analyses",
        data={"patient": "P-1", "_csrf_token": token.group(1)},
        files=[("images", ("bad.dcm", bad_dicoms["unknown", False], "application/dicom"))],
        follow_redirects=False,
    )
    assert r.status_code == 400, r.text[:500]
    assert "Transfer Syntax" in r.text
    # In a batch, the good files are saved and the bad one is named in a warning.
    token = CSRF_RE.search(browser.get("/analyses/new").text)
    assert token
    r = browser.post(
        "/analyses",
        data={"patient": "P-2", "_csrf_token": token.group(1)},
        files=[
            ("images", ("good.jpg", lesion, "image/jpeg")),
            ("images", ("bad.dcm", bad_dicoms["missing", True], "application/dicom")),
            ("images", ("good2.jpg", lesion, "image/jpeg")),
        ],
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text[:500]


def test_camera_page_websocket_replies_with_the_reason(
    server: Server, browser: httpx.Client, bad_dicoms: dict[tuple[str, bool], bytes]
) -> None:
    url = server.url.replace("http", "ws") + "/analyses/live/ws"
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    headers = {"Origin": server.url, "Cookie": cookie}
    replies = asyncio.run(_frames(url, [bad_dicoms["not_a_uid", False]], headers))
    assert replies[0]["error"] == "bad_image" and "Transfer Syntax" in replies[0]["detail"]
