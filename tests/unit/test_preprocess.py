"""The shared preprocessing: format sniffing, pixel budget, EXIF, reduced decode, resize."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from app.inference.formats.raster import reduced_flag as _reduced_flag
from app.inference.preprocess import (
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    center_crop_to_aspect,
    decode_image,
    preprocess,
    read_header,
    sniff_format,
)
from app.inference.spec import ModelSpec

GENERATED = Path(__file__).resolve().parents[1] / "fixtures" / "generated"
# PIL's transpose that stores an upright image so that EXIF orientation N shows it upright.
STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="module")
def upright(fixture_images: list[tuple[Path, str]]) -> Image.Image:
    return Image.open(fixture_images[0][0]).convert("RGB")


def encode(img: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_sniff_format_trusts_content_not_names() -> None:
    assert sniff_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert sniff_format(b"\x89PNG\r\n\x1a\nrest") == "png"
    for name in ("lesion.gif", "lesion.webp", "not_an_image.jpg"):
        with pytest.raises(UnsupportedImageError):
            sniff_format((GENERATED / name).read_bytes())
    with pytest.raises(ImageError) as info:
        sniff_format(b"")
    assert info.value.status == 400


def test_read_header_refuses_a_png_bomb_before_decoding() -> None:
    bomb = (GENERATED / "png_bomb.png").read_bytes()
    assert len(bomb) < 2048
    with pytest.raises(ImageTooLargeError) as info:
        read_header(bomb)
    assert info.value.status == 413 and "100000x100000" in str(info.value)


def test_read_header_answers_413_beyond_pils_own_bomb_limit(upright: Image.Image) -> None:
    # PIL raises DecompressionBombError itself past 2x MAX_IMAGE_PIXELS: still a 413, not 400.
    data = bytearray(encode(upright.resize((64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: ... height(2) width(2) at +5
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(ImageTooLargeError):
        read_header(bytes(data), max_pixels=10**12)


def test_read_header_respects_the_configured_budget(upright: Image.Image) -> None:
    data = encode(upright, "JPEG")
    assert read_header(data).width == 600
    with pytest.raises(ImageTooLargeError):
        read_header(data, max_pixels=600 * 450 - 1)


def test_decode_refuses_truncated_and_corrupt_images() -> None:
    with pytest.raises(ImageError) as info:
        decode_image((GENERATED / "truncated.jpg").read_bytes())
    assert info.value.status == 400
    with pytest.raises(ImageError):
        decode_image(b"\xff\xd8\xff\xe0" + b"\0" * 100)


@pytest.mark.parametrize("orientation", sorted(STORE_FOR_ORIENTATION))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_applies_every_exif_orientation(
    upright: Image.Image, orientation: int, fmt: str
) -> None:
    stored = upright.transpose(STORE_FOR_ORIENTATION[orientation])
    data = encode(stored, fmt, orientation)
    # PIL agrees this file shows the upright image ...
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert expected.shape == (450, 600, 3)
    # ... and so must our decode, at full size and reduced (DCT-scaled) for JPEG.
    got = decode_image(data, reduced=False)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).mean() < 1.0
    if fmt == "JPEG":
        reduced = decode_image(data, target=(224, 224))  # 600x450 -> decoded at 300x225
        assert reduced.shape == (225, 300, 3)
        ref = cv2.resize(expected, (300, 225), interpolation=cv2.INTER_AREA)
        assert np.abs(reduced.astype(int) - ref).mean() < 2.0


def test_decode_output_is_rgb(tmp_path: Path) -> None:
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    for fmt in ("JPEG", "PNG"):
        rgb = decode_image(encode(red, fmt))
        assert rgb[..., 0].mean() > 240 and rgb[..., 2].mean() < 15


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16"])
def test_png_of_any_colour_mode_decodes_to_rgb(mode: str) -> None:
    source = Image.new("RGB", (64, 48), (200, 30, 90))
    image = source.convert(mode if mode != "I;16" else "L")
    if mode == "I;16":  # 16-bit greyscale: the same picture scaled to 0..65535
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    elif mode in ("LA", "RGBA"):
        alpha = np.full((48, 64), 255, np.uint8)
        alpha[:6, :6] = np.arange(36, dtype=np.uint8).reshape(6, 6)  # a transparent corner
        image.putalpha(Image.fromarray(alpha))
    got = decode_image(encode(image, "PNG"))
    assert got.shape == (48, 64, 3) and got.dtype == np.uint8
    # A little alpha is dropped, not blended, as for the upstream images (more is refused:
    # tests/hardening/test_odd_inputs.py); 16 bits scale to 8.
    expected = np.asarray(source.convert(mode if mode != "I;16" else "L").convert("RGB"))
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_reduced_decode_only_when_the_image_still_covers_the_input() -> None:
    from app.inference.preprocess import ImageInfo

    jpeg = ImageInfo("jpeg", 600, 450)
    assert _reduced_flag(jpeg, (224, 224)) == cv2.IMREAD_REDUCED_COLOR_2
    assert _reduced_flag(jpeg, (96, 96)) == cv2.IMREAD_REDUCED_COLOR_4
    assert _reduced_flag(jpeg, (300, 300)) == cv2.IMREAD_COLOR
    assert _reduced_flag(ImageInfo("png", 600, 450), (28, 28)) == cv2.IMREAD_COLOR


@pytest.mark.parametrize("orientation", [None, 6])
def test_reduced_decode_covers_the_input_after_an_exif_rotation(
    upright: Image.Image, orientation: int | None
) -> None:
    # A 300x800 portrait stored as 800x300 with orientation 6 decoded at 1/2 to 150x400:
    # narrower than a 160x120 input, so it was upscaled.
    portrait = upright.resize((300, 800))
    stored = portrait.transpose(STORE_FOR_ORIENTATION[6]) if orientation else portrait
    decoded = decode_image(encode(stored, "JPEG", orientation), target=(160, 120))
    height, width = decoded.shape[:2]
    assert (width, height) == (300, 800)  # upright, and not reduced below the input


def test_center_crop_keeps_the_middle_at_the_target_aspect() -> None:
    img = np.zeros((450, 600, 3), np.uint8)
    img[:, 75:525] = 255  # the central 450x450 square
    square = center_crop_to_aspect(img, 1.0)
    assert square.shape == (450, 450, 3) and square.min() == 255
    assert center_crop_to_aspect(img, 600 / 450) is img


def test_preprocess_scales_and_lays_out_per_the_spec(upright: Image.Image) -> None:
    data = encode(upright, "JPEG")
    nhwc = preprocess(
        data, ModelSpec(name="t", input_width=32, input_height=24, input_scale=1 / 255)
    )
    assert nhwc.shape == (24, 32, 3) and nhwc.dtype == np.float32
    assert nhwc.min() >= 0.0 and nhwc.max() <= 1.0
    nchw = preprocess(
        data,
        ModelSpec(
            name="t",
            input_width=32,
            input_height=24,
            layout="NCHW",
            input_scale=2.0,
            input_offset=-1.0,
        ),
    )
    assert nchw.shape == (3, 24, 32)
    np.testing.assert_allclose(nchw, nhwc.transpose(2, 0, 1) * 255 * 2 - 1, atol=1e-3)


def test_an_upload_larger_than_the_stored_size_is_compressed_as_the_training_copies_were() -> None:
    from app.inference.preprocess import as_stored, resize_rgb

    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (450, 600, 3), dtype=np.uint8), (0, 0), 3)
    via = (200, 150)
    plain = cv2.resize(smooth, via, interpolation=cv2.INTER_AREA)
    served = resize_rgb(smooth, via, via)
    assert np.array_equal(served, as_stored(plain))  # resampled, then one JPEG round trip
    assert not np.array_equal(served, plain)
    assert np.abs(served.astype(int) - plain).mean() < 8  # artefacts, not another image (~40)
    # A stored copy (already 200x150) is used as it is: training data never changes.
    assert np.array_equal(resize_rgb(plain, via, via), plain)
