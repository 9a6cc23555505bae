"""The whole clinic flow in a real headless Chromium (Debian's /usr/bin/chromium) via Playwright.

register -> log in -> upload a fixture -> result -> history -> download the PDF -> log out.
Screenshots land in tests/artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader
from web.live import live_server  # tests/ (the packages' rootdir) is on sys.path

from app.config import Settings, default_model_path
from app.db.migrate import migrate
from app.main import create_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PASSWORD = "a long enough password"


def _camera_video(image: Path, out: Path, frames: int = 10) -> Path:
    """A Y4M clip of a HAM10000 image, for Chromium's fake camera (the live camera flow)."""
    import cv2

    bgr = cv2.imread(str(image))
    height, width = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()  # Y, then U, then V planes
    header = f"YUV4MPEG2 W{width} H{height} F5:1 Ip A1:1 C420jpeg\n".encode()
    out.write_bytes(header + (b"FRAME\n" + i420) * frames)
    return out


@pytest.fixture(scope="module")
def browser(
    fixture_images: list[tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    camera = _camera_video(fixture_images[0][0], tmp_path_factory.mktemp("camera") / "lesion.y4m")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                # A camera that films a lesion image, allowed without a permission prompt.
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    model = Path(os.environ.get("APP_MODEL_PATH") or default_model_path())
    if not model.is_file():
        pytest.skip(f"no bundled model at {model}: run the conversion or set APP_MODEL_PATH")
    settings = Settings(
        data_dir=tmp_path / "data",
        model_path=model,
        providers="cpu",
        ort_threads=1,
        dev=False,
        secret_key="browser-test-secret-" + "k" * 24,
        storage_key="B" * 43 + "=",
        registration="open",
    )
    # Playwright's sync API holds an event loop on this thread; migrate on another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(migrate, settings).result()
    with live_server(create_app(settings)) as url:
        yield url


def _register(page: Any, server: str, username: str) -> None:
    """Create an account through the form; the page lands on the dashboard."""
    page.goto(server + "/register")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")


def test_browser_full_flow(
    browser: object, server: str, fixture_images: list[tuple[Path, str]], tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    image, _ = fixture_images[0]
    context = browser.new_context(
        viewport={"width": 1280, "height": 900},  # type: ignore[attr-defined]
        accept_downloads=True,
    )
    page = context.new_page()
    external: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server) else external.append(r.url))

    page.goto(server + "/")
    page.get_by_role("link", name="Create an account").click()
    page.fill("#username", "dr.browser")
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")
    page.screenshot(path=str(ARTIFACTS / "01-dashboard-empty.png"), full_page=True)

    # Log out and back in, through the forms.
    page.click("#logout")
    page.wait_for_url("**/login")
    page.fill("#username", "DR.BROWSER")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")

    page.click("text=New analysis")
    page.fill("#patient", "Browser Patient 42")
    page.set_input_files("#images", str(image))
    assert image.name in page.inner_text("#file-list")
    page.screenshot(path=str(ARTIFACTS / "02-new-analysis.png"), full_page=True)
    page.click("#analyse")
    page.wait_for_url("**/analyses/*")
    assert "Browser Patient 42" in page.inner_text("#patient")
    assert "Risk group:" in page.inner_text("#risk-group")
    assert "second opinion, not a diagnosis" in page.inner_text("#disclaimer").lower()
    assert page.locator("#prob-chart svg rect").count() == 7
    # No class name is cut off at the chart's left edge ("Benign keratosis-like lesion").
    left = "Math.min(...[...document.querySelectorAll('#prob-chart text')].map(t => t.getBBox().x))"
    assert page.evaluate(left) >= 0
    assert page.locator("img[alt='Uploaded lesion image']").evaluate("i => i.naturalWidth") > 0
    page.screenshot(path=str(ARTIFACTS / "03-result.png"), full_page=True)
    # The Grad-CAM heat map opens under the result, with its caveat.
    page.click("#explanation summary")
    heat_map = page.locator("#explanation img")
    heat_map.scroll_into_view_if_needed()
    heat_map.evaluate("i => i.decode()")  # resolves once the image is loaded and decoded
    assert heat_map.evaluate("i => i.naturalWidth") == 320
    assert "not an outline of the lesion" in page.inner_text("#explanation-caveat")
    page.screenshot(path=str(ARTIFACTS / "03b-explanation.png"), full_page=True)

    with page.expect_download() as info:
        page.click("#download-report")
    pdf_path = tmp_path / "report.pdf"
    info.value.save_as(pdf_path)
    shutil.copy(pdf_path, ARTIFACTS / "04-report.pdf")
    text = " ".join(PdfReader(io.BytesIO(pdf_path.read_bytes())).pages[0].extract_text().split())
    assert "Browser Patient 42" in text and "second opinion, not a diagnosis" in text

    page.click("text=History")
    page.wait_for_url("**/history")
    assert page.locator("#history tbody tr").count() == 1
    assert "Browser Patient 42" in page.inner_text("#history")
    page.screenshot(path=str(ARTIFACTS / "05-history.png"), full_page=True)

    # Responsive: the result page on a phone-sized viewport.
    phone = browser.new_context(
        viewport={"width": 390, "height": 844},  # type: ignore[attr-defined]
        storage_state=context.storage_state(),
    )
    mobile = phone.new_page()
    mobile.goto(page.url.replace("/history", "/dashboard"))
    mobile.screenshot(path=str(ARTIFACTS / "06-dashboard-phone.png"), full_page=True)
    assert mobile.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    phone.close()

    page.click("#logout")
    page.wait_for_url("**/login")
    page.goto(server + "/history")
    assert "/login?next=" in page.url  # the session is gone
    page.screenshot(path=str(ARTIFACTS / "07-logged-out.png"), full_page=True)
    assert external == [], f"pages fetched off-site resources: {external}"  # offline kiosks
    context.close()


def test_browser_live_camera_predicts_and_saves_a_frame(browser: object, server: str) -> None:
    # Chromium's fake camera films a HAM10000 image; the page streams it over the WebSocket,
    # shows live predictions, and saves the frame on screen as an ordinary analysis.
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = context.new_page()
    _register(page, server, "dr.kiosk")
    page.click("text=Live camera")
    page.wait_for_url("**/analyses/live")
    assert "dermatoscope" in page.inner_text("#disclaimer")
    page.click("#start")
    # A selector, not wait_for_function: the page's CSP forbids the eval that polling uses.
    page.wait_for_selector("#live-label:has-text('Most likely')", timeout=30_000)
    assert "Risk group:" in page.inner_text("#live-risk")
    assert page.inner_text("#live-confidence").endswith("%")
    # The fake camera films one image, so every frame gets the same answer: no race here.
    flagged = page.inner_text("#live-flag") == "raised"
    urgent = flagged or "malignant" in page.inner_text("#live-risk")
    assert ("dermatologist promptly" in page.inner_text("#live-advice")) == urgent
    assert "second opinion" in page.inner_text("#live-status")
    page.screenshot(path=str(ARTIFACTS / "08-live-camera.png"), full_page=True)
    page.fill("#patient", "Kiosk Patient 7")
    page.click("#save")
    page.wait_for_url("**/analyses/*-*")  # the new analysis's result page
    assert "Kiosk Patient 7" in page.inner_text("#patient")
    assert page.locator("img[alt='Uploaded lesion image']").evaluate("i => i.naturalWidth") > 0
    assert "camera-frame.jpg" in page.content()
    context.close()


def test_browser_document_upload_shows_the_retake_message(
    browser: object, server: str, tmp_path: Path
) -> None:
    """A printed page is refused in plain words, with a retake offer, and nothing is stored."""
    import numpy as np

    from conversion.devset import _text_page, jpeg

    document = tmp_path / "referral-letter.jpg"
    # Cream paper: a near-white page is refused as colourless before the model runs; this one
    # reaches the distribution check, whose message the test reads.
    document.write_bytes(jpeg(_text_page(np.random.default_rng(11), 800, 600, (245, 235, 220))))
    page = browser.new_page()  # type: ignore[attr-defined]
    blocked: list[str] = []  # anything the page's Content-Security-Policy refused
    page.on(
        "console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None
    )
    _register(page, server, "dr.gate")
    page.click("text=New analysis")
    page.fill("#patient", "Gate Patient 9")
    page.set_input_files("#images", str(document))
    page.click("#analyse")
    page.wait_for_selector("#retake")
    assert "Please retake the image" in page.inner_text("#retake")
    assert "does not look like a dermoscopic image" in page.inner_text("main")
    assert page.locator("#analyse_anyway").is_visible()
    assert not page.locator("#analyse_anyway").is_checked()
    page.screenshot(path=str(ARTIFACTS / "08-gate-retake.png"), full_page=True)
    page.goto(server + "/history")
    assert "Gate Patient 9" not in page.inner_text("main")
    assert blocked == []
    page.close()
