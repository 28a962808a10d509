"""Face detection for avatars: a clear one-face portrait is accepted with one face
however it is cropped, scaled, mirrored, darkened or brightened; two people are
two faces.

A grid rather than hypothesis (not a dependency of the project): each case is
one detection (~50 ms), so the grid runs in a few seconds on a slow machine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from models.avatar.faces import FaceDetector
from server import cli
from tools.avatar_library import AvatarError, AvatarLimits
from tools.avatar_prepare import find_face

NOSE = (223.0, 130.0)  # the astronaut's nose tip, in data.astronaut() pixels
# Windows (y0, y1, x0, x1) of data.astronaut() that hold the whole head. The
# mirrored ones made the short-range detector box the suit's collar (scored
# 0.50-0.75), which was counted as a second face.
CROPS = [
    (0, 512, 0, 512),
    (0, 300, 50, 350),
    (30, 300, 100, 350),
    (60, 400, 50, 420),
    (0, 400, 100, 450),
    (0, 350, 60, 400),
]
# (name, scale, light): light multiplies every pixel value (clipped to 255).
LOOKS = [
    ("as is", 1.0, 1.0),
    ("smaller", 0.9, 1.0),
    ("larger", 2.0, 1.0),
    ("darker", 1.0, 0.45),
    ("brighter", 1.0, 1.5),
    ("smaller and darker", 0.9, 0.6),
    ("larger and brighter", 1.5, 1.3),
]


def portrait(
    crop: tuple[int, int, int, int], mirrored: bool, scale: float, light: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """A variant of the astronaut photo and where her nose is in it."""
    y0, y1, x0, x1 = crop
    rgb = data.astronaut()[y0:y1, x0:x1]
    nose_x, nose_y = NOSE[0] - x0, NOSE[1] - y0
    if mirrored:
        rgb = rgb[:, ::-1]
        nose_x = rgb.shape[1] - 1 - nose_x
    if scale != 1.0:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=interpolation)
        nose_x, nose_y = nose_x * scale, nose_y * scale
    if light != 1.0:
        rgb = np.clip(rgb.astype(np.float32) * light, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), (nose_x, nose_y)


@pytest.fixture(scope="module")
def detector() -> Iterator[FaceDetector]:
    det = FaceDetector()
    yield det
    det.close()


VARIANTS = [
    pytest.param(
        crop,
        mirrored,
        scale,
        light,
        id="rows {}-{} cols {}-{}{}, {}".format(*crop, ", mirrored" if mirrored else "", look),
    )
    for crop, mirrored, (look, scale, light) in itertools.product(CROPS, (False, True), LOOKS)
]


@pytest.mark.parametrize(("crop", "mirrored", "scale", "light"), VARIANTS)
def test_one_face_portrait_variants_are_accepted(
    detector: FaceDetector,
    crop: tuple[int, int, int, int],
    mirrored: bool,
    scale: float,
    light: float,
) -> None:
    rgb, (nose_x, nose_y) = portrait(crop, mirrored, scale, light)
    boxes = detector(rgb)
    assert len(boxes) == 1, [b.round().tolist() for b in boxes]
    x, y, w, h = find_face(rgb, AvatarLimits(), detector)
    assert x < nose_x < x + w and y < nose_y < y + h  # the box is on her face


def two_people(layout: str) -> np.ndarray:
    a = data.astronaut()
    if layout == "side by side":
        return np.concatenate([a, a], axis=1)
    if layout == "side by side, one mirrored":
        return np.concatenate([a, a[:, ::-1]], axis=1)
    # A second person at 0.6 of the size: beside the first, or in front of her.
    small = cv2.resize(a, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    if layout == "beside, smaller":
        canvas = np.full((512, 512 + sw, 3), 200, np.uint8)
        canvas[:, :512] = a
        canvas[512 - sh :, 512:] = small
        return canvas
    canvas = a.copy()
    canvas[512 - sh :, 512 - sw :] = small
    return canvas


@pytest.mark.parametrize(
    "layout", ["side by side", "side by side, one mirrored", "beside, smaller", "in front, smaller"]
)
def test_two_people_are_two_faces(detector: FaceDetector, layout: str) -> None:
    rgb = two_people(layout)
    assert len(detector(rgb)) == 2
    with pytest.raises(AvatarError, match="2 faces found in the photo"):
        find_face(rgb, AvatarLimits(), detector)


def test_cli_adds_the_mirrored_crop_of_issue_10(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The portrait `videochat avatar add` refused with "2 faces found"."""
    rgb, _ = portrait((30, 300, 100, 350), True, 1.0, 1.0)
    photo = tmp_path / "me.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    monkeypatch.setenv("VIDEOCHAT_WEIGHTS_DIR", str(tmp_path / "weights"))
    assert cli.main(["avatar", "add", "me", "--photo", str(photo)]) == 0, capsys.readouterr().err
    assert (tmp_path / "weights" / "avatars" / "me" / "landmarks.npy").is_file()
