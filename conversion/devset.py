"""A dev set of images the gate must refuse, built only from packaged material and generators.

Nothing is downloaded: scikit-image's and scikit-learn's bundled sample images (BSD-style
licences, see their packages), rendered documents and screenshots, synthetic frames, and
HAM10000 images degraded the ways a clinician would retake them. A fixed seed makes every run
the same set. Each item is JPEG bytes, as an upload would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SEED = 0


@dataclass(frozen=True, slots=True)
class Item:
    group: str
    name: str
    data: bytes


def jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(image * (255 if image.max() <= 1 else 1), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def _crops(rgb: np.ndarray, rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    """The whole picture, then random crops of 40-90 % of it: what a camera might frame."""
    yield rgb
    h, w = rgb.shape[:2]
    for _ in range(count - 1):
        scale = rng.uniform(0.4, 0.9)
        ch, cw = int(h * scale), int(w * scale)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        yield rgb[y : y + ch, x : x + cw]


def photos(rng: np.random.Generator, crops: int = 6) -> Iterator[Item]:
    """Everyday photos and sample pictures bundled with scikit-image and scikit-learn."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
        "retina", "color", "ihc", "immunohistochemistry", "grass", "gravel", "brick", "camera",
        "moon", "coins", "horse", "logo", "cell", "microaneurysms",
    ]  # fmt: skip
    pictures: list[tuple[str, np.ndarray]] = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            pictures.append((name, _as_rgb(np.asarray(loader()))))
        except Exception:
            continue
    for i, image in enumerate(load_sample_images().images):
        pictures.append((f"sklearn_{i}", _as_rgb(image)))
    for name, rgb in pictures:
        for j, crop in enumerate(_crops(rgb, rng, crops)):
            yield Item("photos", f"{name}_{j}", jpeg(crop))


def faces(rng: np.random.Generator, count: int = 40) -> Iterator[Item]:
    """Faces from scikit-image's LFW subset (grey 25x25), enlarged to a phone photo's scale."""
    from skimage import data as skdata

    subset = skdata.lfw_subset()  # type: ignore[no-untyped-call]
    for i in rng.choice(len(subset), size=min(count, len(subset)), replace=False):
        face = _as_rgb(subset[i])
        big = cv2.resize(face, (400, 400), interpolation=cv2.INTER_CUBIC)
        tint = np.array(rng.uniform([0.9, 0.75, 0.6], [1.05, 0.9, 0.8]), np.float32)
        yield Item("faces", f"lfw_{i}", jpeg(np.clip(big * tint, 0, 255).astype(np.uint8)))


_WORDS = (
    "patient", "consent", "form", "date", "signature", "clinic", "referral", "dermatology",
    "history", "medication", "allergy", "report", "invoice", "total", "amount", "page",
    "section", "summary", "the", "of", "and", "to", "in", "for",
)  # fmt: skip


def _text_page(rng: np.random.Generator, w: int, h: int, paper: tuple[int, int, int]) -> np.ndarray:
    page = np.full((h, w, 3), paper, np.uint8)
    font = int(
        rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX])
    )
    scale = float(rng.uniform(0.4, 1.0))
    step = int(28 * scale) + 8
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    for y in range(step + 10, h - 10, step):
        line = " ".join(rng.choice(_WORDS, size=12))
        cv2.putText(page, line, (int(rng.integers(10, 40)), y), font, scale, ink, 1, cv2.LINE_AA)
    return page


def documents(rng: np.random.Generator, count: int = 40) -> Iterator[Item]:
    """Rendered text pages, some as if photographed: tilted, shaded, colour-cast."""
    from skimage import data as skdata

    for name in ("page", "text"):
        yield Item("documents", name, jpeg(_as_rgb(np.asarray(getattr(skdata, name)()))))
    for i in range(count):
        red, green, blue = (int(v) for v in rng.integers(215, 256, 3))
        paper = (red, green, blue)
        page = _text_page(rng, 800, 600, paper)
        if i % 2:  # photographed: rotated, shaded across, warmer light
            matrix = cv2.getRotationMatrix2D((400, 300), float(rng.uniform(-12, 12)), 1.1)
            page = cv2.warpAffine(page, matrix, (800, 600), borderValue=(90, 80, 70))
            shade = np.linspace(float(rng.uniform(0.6, 0.9)), 1.0, 800, dtype=np.float32)
            cast = np.array(rng.uniform([0.95, 0.85, 0.7], [1.0, 0.95, 0.85]), np.float32)
            page = np.clip(page * shade[None, :, None] * cast, 0, 255).astype(np.uint8)
        yield Item("documents", f"page_{i}", jpeg(page))


def screenshots(rng: np.random.Generator, count: int = 30) -> Iterator[Item]:
    """Application-like screens: title bars, panels, buttons, text."""
    for i in range(count):
        w, h = 1024, 768
        screen = np.full((h, w, 3), rng.integers(200, 256, 3), np.uint8)
        cv2.rectangle(screen, (0, 0), (w, 40), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        for _ in range(int(rng.integers(3, 9))):
            x, y = int(rng.integers(0, w - 200)), int(rng.integers(50, h - 100))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.rectangle(
                screen,
                (x, y),
                (x + int(rng.integers(80, 400)), y + int(rng.integers(30, 200))),
                colour,
                -1,
            )
        text = _text_page(rng, w // 2, h // 2, (255, 255, 255))
        screen[h // 3 : h // 3 + h // 2, w // 4 : w // 4 + w // 2] = text
        yield Item("screenshots", f"screen_{i}", jpeg(screen))


def synthetic(rng: np.random.Generator) -> Iterator[Item]:
    """Solid colours (skin tones and black among them), gradients, noise, patterns."""
    w, h = 640, 480
    solids = [
        (0, 0, 0), (255, 255, 255), (128, 128, 128), (224, 172, 105), (198, 134, 66),
        (141, 85, 36), (255, 219, 172), (200, 30, 30), (30, 60, 200), (20, 140, 40),
    ]  # fmt: skip
    for i, colour in enumerate(solids):
        yield Item("synthetic", f"solid_{i}", jpeg(np.full((h, w, 3), colour, np.uint8)))
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    pairs = [
        ((40, 60, 200), (140, 90, 50)), ((0, 0, 0), (255, 255, 255)),
        ((230, 180, 150), (120, 70, 40)), ((255, 0, 0), (0, 0, 255)),
        ((250, 220, 190), (200, 150, 120)),
    ]  # fmt: skip
    for i, (a, b) in enumerate(pairs):
        grad = np.array(a, np.float32) * (1 - ramp) + np.array(b, np.float32) * ramp
        grad = np.repeat(grad, h, axis=0)
        yield Item("synthetic", f"gradient_{i}", jpeg(grad.astype(np.uint8)))
        radial = np.hypot(*np.meshgrid(np.linspace(-1, 1, w), np.linspace(-1, 1, h)))[..., None]
        mix = np.clip(radial, 0, 1).astype(np.float32)
        blob = np.array(b, np.float32) * (1 - mix) + np.array(a, np.float32) * mix
        yield Item("synthetic", f"radial_{i}", jpeg(blob.astype(np.uint8)))
    for i in range(8):
        noise: np.ndarray = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if i % 2:
            noise = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(1, 6)))
        yield Item("synthetic", f"noise_{i}", jpeg(noise))
    for i, cell in enumerate((8, 32, 80)):
        board = ((np.indices((h, w)).sum(axis=0) // cell) % 2 * 255).astype(np.uint8)
        yield Item("synthetic", f"checker_{i}", jpeg(_as_rgb(board)))


DEGRADATIONS = ("blurred", "dark", "overexposed", "corner_crop", "thumbnail")


def degrade(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One retake-worthy version of a dermoscopic image (sizes relative to the image)."""
    h, w = rgb.shape[:2]
    if kind == "blurred":  # badly out of focus or moved: sigma ~2.5 % of the width
        return cv2.GaussianBlur(rgb, (0, 0), w * 0.025)
    if kind == "dark":  # a lamp off, or a hand over the lens
        return (rgb.astype(np.float32) * rng.uniform(0.05, 0.15)).astype(np.uint8)
    if kind == "overexposed":  # flash glare, exposure blown out
        lifted = rgb.astype(np.float32) * rng.uniform(2.5, 4.0) + 60
        return np.asarray(np.clip(lifted, 0, 255), dtype=np.uint8)
    if kind == "corner_crop":  # the lesion out of frame: a corner ninth of the field
        corner = int(rng.integers(4))
        ch, cw = h // 3, w // 3
        y = 0 if corner < 2 else h - ch
        x = 0 if corner % 2 == 0 else w - cw
        crop = rgb[y : y + ch, x : x + cw]
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "thumbnail":  # a preview image sent instead of the original
        return cv2.resize(rgb, (w // 3, h // 3), interpolation=cv2.INTER_AREA)
    raise ValueError(kind)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def degraded(paths: list[Path], rng: np.random.Generator) -> Iterator[Item]:
    """Each image once per degradation (a HAM10000 image decoded as the service would)."""
    for path in paths:
        rgb = _read_rgb(path)
        for kind in DEGRADATIONS:
            yield Item(f"degraded_{kind}", path.stem, jpeg(degrade(rgb, kind, rng)))


ROUND_FIELDS = (0.6, 1.0, 1.15)  # the disc's diameter over the picture's height (0.6: a phone)


def in_a_disc(rgb: np.ndarray, diameter: float) -> np.ndarray:
    """``rgb`` black outside a centred disc ``diameter`` pixels wide, as a dermatoscope's lens
    frames a picture."""
    height, width = rgb.shape[:2]
    inside = np.zeros((height, width), np.uint8)
    cv2.circle(inside, (width // 2, height // 2), int(diameter / 2), 255, -1, cv2.LINE_AA)
    return (rgb * (inside[..., None] / 255.0)).astype(np.uint8)


def in_round_field(rgb: np.ndarray, ratio: float) -> np.ndarray:
    """``rgb`` in a disc ``ratio`` x its height wide; below 1, the disc keeps ``rgb``'s own
    height and sits in a black frame 1 / ``ratio`` x as large, as a phone's camera sees a
    dermatoscope's lens (the skin keeps its resolution)."""
    height, width = rgb.shape[:2]
    if ratio >= 1:
        return in_a_disc(rgb, ratio * height)
    frame = np.zeros((round(height / ratio), round(width / ratio), 3), np.uint8)
    top, left = (frame.shape[0] - height) // 2, (frame.shape[1] - width) // 2
    frame[top : top + height, left : left + width] = in_a_disc(rgb, height)
    return frame


def round_field(paths: list[Path]) -> Iterator[Item]:
    """HAM10000 images framed in a round field of view (``ROUND_FIELDS``): dermoscopy that
    the gate should accept (the service crops to a small disc and fills the black,
    app.inference.field_of_view)."""
    for path in paths:
        rgb = _read_rgb(path)
        for ratio in ROUND_FIELDS:
            yield Item(f"round_field_{ratio:g}", path.stem, jpeg(in_round_field(rgb, ratio)))


def out_of_scope(seed: int = SEED) -> list[Item]:
    """Every non-dermoscopic group, the same items for the same seed."""
    rng = np.random.default_rng(seed)
    return [
        *photos(rng),
        *faces(rng),
        *documents(rng),
        *screenshots(rng),
        *synthetic(rng),
    ]
