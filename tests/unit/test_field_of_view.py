"""A round field of view's black outside is found and filled; other pictures pass untouched."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.field_of_view import DARK, MAX_OUTSIDE, disc_box, fill_outside, outside_mask
from conversion.devset import in_a_disc


def disc(rgb: np.ndarray, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` framed as a dermatoscope leaves it (black outside a centred disc), and the
    disc's own pixels."""
    white = np.full_like(rgb, 255)
    return in_a_disc(rgb, diameter), in_a_disc(white, diameter)[..., 0] == 255


def lesion(path: Path) -> np.ndarray:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (200, 150), interpolation=cv2.INTER_AREA)


def test_pictures_without_a_black_outside_are_returned_as_they_are(
    fixture_images: list[tuple[Path, str]],
) -> None:
    for path, _ in fixture_images:
        rgb = lesion(path)
        filled, share = fill_outside(rgb)
        assert filled is rgb and share == 0.0, path.name


@pytest.mark.parametrize("diameter", [150, 175, 200])
def test_a_disc_s_black_outside_is_found_and_filled_from_its_rim(
    fixture_images: list[tuple[Path, str]], diameter: int
) -> None:
    rgb = lesion(fixture_images[0][0])
    framed, inside = disc(rgb, diameter)

    outside = outside_mask(framed)
    assert outside is not None
    # what is found is the black outside the disc, give or take its anti-aliased rim
    assert abs(outside.mean() - (1 - inside.mean())) < 0.02
    filled, share = fill_outside(framed)
    assert share == pytest.approx(outside.mean())
    assert filled.max(axis=2)[~inside].mean() > 4 * DARK  # no longer black
    core = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    np.testing.assert_array_equal(filled[core], framed[core])  # the skin itself is kept


def test_a_dark_picture_is_left_for_the_quality_checks() -> None:
    black = np.zeros((150, 200, 3), np.uint8)
    assert outside_mask(black) is None  # all of it "outside": over MAX_OUTSIDE
    dim = np.full((150, 200, 3), 20, np.uint8)
    dim[60:90, 80:120] = 200  # a bright patch in a dark frame: still mostly dark
    assert (dim.max(axis=2) < DARK).mean() > MAX_OUTSIDE and outside_mask(dim) is None


def test_dark_corners_that_do_not_reach_an_edge_are_not_a_field_of_view() -> None:
    skin = np.full((150, 200, 3), (200, 150, 140), np.uint8)
    skin[:3, :3] = skin[:3, -3:] = skin[-3:, :3] = skin[-3:, -3:] = 0  # four dark corner dots
    assert outside_mask(skin) is None  # 36 pixels: under MIN_OUTSIDE
    lesion_in_the_middle = skin.copy()
    cv2.circle(lesion_in_the_middle, (100, 75), 40, (20, 15, 10), -1)
    assert outside_mask(lesion_in_the_middle) is None


def test_a_small_disc_in_black_is_boxed_as_tall_as_the_disc(
    fixture_images: list[tuple[Path, str]],
) -> None:
    """A dermatoscope on a phone: a disc 0.6 x the picture's height, off centre."""
    rgb = cv2.cvtColor(cv2.imread(str(fixture_images[1][0])), cv2.COLOR_BGR2RGB)  # 600x450
    height, width = rgb.shape[:2]
    diameter = 0.6 * height
    shifted = np.zeros_like(rgb)
    framed = in_a_disc(rgb, diameter)
    shifted[:, 60:] = framed[:, :-60]  # the disc's centre at x = 360, y = 225

    box = disc_box(shifted, 4 / 3)

    assert box is not None
    x, y, w, h = box
    assert abs(h - diameter) <= 0.03 * height  # found on a 160-wide copy: a few pixels off
    assert abs(w / h - 4 / 3) < 0.01
    assert abs((x + w / 2) - 360) <= 6 and abs((y + h / 2) - 225) <= 6
    assert x >= 0 and x + w <= width and y >= 0 and y + h <= height


def test_only_a_bright_disc_in_mostly_black_is_boxed(
    fixture_images: list[tuple[Path, str]],
) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(fixture_images[1][0])), cv2.COLOR_BGR2RGB)
    assert disc_box(rgb, 4 / 3) is None  # no black at all
    assert disc_box(in_a_disc(rgb, rgb.shape[0]), 4 / 3) is None  # a big disc: filled instead
    assert disc_box(np.zeros_like(rgb), 4 / 3) is None  # all black: too dark, not a disc
    square = np.zeros_like(rgb)
    square[100:350, 175:425] = rgb[100:350, 175:425]
    assert disc_box(square, 4 / 3) is None  # a bright square: not a lens's field
    speck = np.zeros_like(rgb)
    cv2.circle(speck, (300, 225), 30, (200, 150, 140), -1)
    assert disc_box(speck, 4 / 3) is None  # under MIN_DISC of the picture


@pytest.mark.parametrize("shape", [(1, 20000, 3), (20000, 1, 3), (1, 1, 3), (2, 3, 3)])
def test_strips_and_specks_are_looked_at_cheaply(shape: tuple[int, int, int]) -> None:
    dark = np.zeros(shape, np.uint8)  # every corner dark: the slow path is taken
    assert disc_box(dark, 4 / 3) is None
