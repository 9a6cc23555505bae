"""A dermatoscope's round field of view: the black outside the lens, filled before analysis.

Many dermatoscopes leave a picture that is a disc of skin inside black corners (and, on a 4:3
frame, black bands at the sides). HAM10000 has few such pictures (2.4 % have black corners), so
the model and the gate's distribution check know the skin and not the black. Left black, the
gate refused 150 of 150 test images framed in a disc as wide as the picture is high, and the
model's balanced accuracy on 600 such val images was 0.574 (0.724 unframed). Each outside pixel
now takes its mirror image across the disc's edge: 1 of 150 refused, balanced accuracy 0.694
(OpenCV's Telea inpainting: 0.612). On the val split as it is, 37 of 1,518 pictures are filled
and no figure moved beyond a flip (BMA 0.7172 -> 0.7171). The overlay of an explanation is
still drawn on the picture as sent.

On a phone the disc can be a small circle in a black frame (more than ``MAX_OUTSIDE`` of it
black): ``disc_box`` finds a 4:3 box as tall as the disc, which ``prepare`` crops the upload to
before the fill. Left whole, 150 of 150 test images framed in a disc 0.6 x the frame's height
were refused as too dark; cropped and filled, 1.

Only a picture whose four corners are dark is touched: filled when the dark connected to them
is ``MIN_OUTSIDE``-``MAX_OUTSIDE`` of it, cropped when more is dark and the rest is one bright
disc. A black or dark frame is not a field of view and stays for the quality checks to refuse.
"""

from __future__ import annotations

import cv2
import numpy as np

DARK = 32  # max(R, G, B) below this is the black outside the lens (JPEG noise included)
MIN_OUTSIDE = 0.02  # less is a dark corner pixel or two, not a field of view
MAX_OUTSIDE = 0.6  # more is a dark picture, for the quality checks
CORNER = 3  # pixels: each corner's patch must be dark throughout
_GROW = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # the lens's soft rim
LOOK_SIDE = 160  # a small disc is looked for on a copy this long (0.1 ms)
MIN_DISC = 0.03  # a smaller bright spot in a dark picture is not a field of view
DISC_FILL = (0.65, 0.88)  # a disc covers pi / 4 = 0.785 of its bounding box, a square 1.0


def _brightest(rgb: np.ndarray) -> np.ndarray:
    """max(R, G, B) per pixel (numpy's max over a 3-wide axis took 0.66 ms at 200x150)."""
    return np.asarray(cv2.max(cv2.max(rgb[..., 0], rgb[..., 1]), rgb[..., 2]))


def _corners_dark(rgb: np.ndarray) -> bool:
    """Whether all four corners are dark: False decides the common case on 4 x 9 pixels."""
    c = CORNER
    corners = (rgb[:c, :c], rgb[:c, -c:], rgb[-c:, :c], rgb[-c:, -c:])
    return all(patch.max() < DARK for patch in corners)


def _dark_from_corners(rgb: np.ndarray) -> np.ndarray | None:
    """[H, W] bool of the dark reaching in from the four corners, or None unless every corner
    is dark."""
    if not _corners_dark(rgb):
        return None
    dark = (_brightest(rgb) < DARK).astype(np.uint8)
    height, width = dark.shape
    reached = np.zeros((height + 2, width + 2), np.uint8)  # floodFill's mask has a 1-px frame
    for x, y in ((0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)):
        if not reached[y + 1, x + 1]:
            cv2.floodFill(dark, reached, (x, y), 1, 0, 0, 8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
    return reached[1:-1, 1:-1].astype(bool)


def outside_mask(rgb: np.ndarray) -> np.ndarray | None:
    """[H, W] bool of the black outside a round field of view, or None when ``rgb`` is not
    framed so."""
    outside = _dark_from_corners(rgb)
    if outside is None:
        return None
    return outside if MIN_OUTSIDE <= outside.mean() <= MAX_OUTSIDE else None


def disc_box(rgb: np.ndarray, aspect: float) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) of a box of width / height ``aspect`` as tall as a *small* round field of
    view and centred on it, in ``rgb``'s pixels; None unless ``rgb`` is a bright disc in a
    black frame with more than ``MAX_OUTSIDE`` of it black (a dermatoscope on a phone).

    Cropped to that box, the picture is a disc as wide as it is high, which ``fill_outside``
    handles; left whole, it was refused as too dark.
    """
    if not _corners_dark(rgb):
        return None
    height, width = rgb.shape[:2]
    scale = max(width, height) / LOOK_SIDE  # the longer side: a 1 x 20000 strip stays small
    look = cv2.resize(rgb, (max(1, round(width / scale)), max(1, round(height / scale))))
    outside = _dark_from_corners(look)
    if outside is None or outside.mean() <= MAX_OUTSIDE:
        return None
    inside = ~outside
    ys, xs = np.nonzero(inside)
    if len(ys) < MIN_DISC * inside.size:
        return None
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    across, down = right - left, bottom - top
    fill = len(ys) / (across * down)
    if not DISC_FILL[0] < fill < DISC_FILL[1] or not 0.75 < across / down < 1.33:
        return None  # not a disc: a bright patch of another shape
    box_h = min(height, round(down * scale))
    box_w = min(width, round(box_h * aspect))
    centre_x, centre_y = (left + right) / 2 * scale, (top + bottom) / 2 * scale
    x = int(np.clip(round(centre_x - box_w / 2), 0, width - box_w))
    y = int(np.clip(round(centre_y - box_h / 2), 0, height - box_h))
    return x, y, box_w, box_h


def fill_outside(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """``rgb`` with the black outside a round field of view filled, and the share of the
    picture filled (0.0 and ``rgb`` itself when it is not framed so).

    Each outside pixel takes the colour of its mirror image across the disc's edge, found by
    stepping twice its distance from the disc towards the disc's centre: skin texture, as the
    members' rotation augmentation (mirrored borders) showed them at a picture's edges. What
    still lands on black (a corner further out than the disc is wide) is inpainted (Telea).
    """
    outside = outside_mask(rgb)
    if outside is None:
        return rgb, 0.0
    share = float(outside.mean())
    outside = cv2.dilate(outside.astype(np.uint8), _GROW).astype(bool)  # the lens's soft rim
    height, width = outside.shape
    ys, xs = np.nonzero(~outside)
    centre_y, centre_x = ys.mean(), xs.mean()
    gap = cv2.distanceTransform(outside.astype(np.uint8), cv2.DIST_L2, 5)
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    to_y, to_x = centre_y - grid_y, centre_x - grid_x
    length = np.maximum(np.hypot(to_y, to_x), 1e-3)
    step = np.where(outside, 2 * gap + 1, 0)
    map_y = np.clip(grid_y + to_y / length * step, 0, height - 1).astype(np.float32)
    map_x = np.clip(grid_x + to_x / length * step, 0, width - 1).astype(np.float32)
    filled = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    still = outside & (_brightest(filled) < DARK)
    if still.any():
        filled = cv2.inpaint(filled, still.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    return filled, share
