"""Short videos of real human faces, made on the fly, with the truth known frame by frame.

Only pictures whose rights are clear, all shipped inside scikit-image: ``astronaut.png``
(Eileen Collins, a public-domain NASA portrait), ``lfw_subset`` (real LFW faces and non-faces,
25x25), and face-free scenes (``coffee.png``, ``rocket.jpg``, ``text.png``). The astronaut is
warped into each frame with a known similarity transform, so her face region and eyes are
known in frame pixels: pans, zooms, in-plane rotation, a half-face occluder, cuts to scenes
without a face and to title cards of text, and cuts between LFW faces.

Used by ``tests/test_face_stage_real.py`` and ``bench/detectors.py``.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from skimage import data

# The astronaut's face in astronaut.png pixels (read off the image): hairline to chin, cheek to
# cheek, and her eyes (her right eye, on the image's left, first).
ASTRONAUT_FACE = (180.0, 75.0, 272.0, 190.0)  # x0, y0, x1, y1
ASTRONAUT_EYES = np.array([[203.0, 101.0], [246.0, 104.0]], np.float32)
_FACE_CENTRE = ((ASTRONAUT_FACE[0] + ASTRONAUT_FACE[2]) / 2, (ASTRONAUT_FACE[1] + ASTRONAUT_FACE[3]) / 2)
_FACE_WIDTH = ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]

KINDS_WITH_FACE = ("still", "pan", "zoom", "rotate", "occluded", "lfw")
KINDS_WITHOUT_FACE = ("no_face", "text")


@dataclasses.dataclass
class SceneFrame:
    """One frame and what is in it.

    Attributes:
        image: BGR uint8 ``[H, W, 3]``.
        kind: Scene kind (``KINDS_WITH_FACE`` or ``KINDS_WITHOUT_FACE``).
        face: Known face region ``(x0, y0, x1, y1)`` in frame pixels, None when there is no face.
        eyes: ``[2, 2]`` eye positions in frame pixels (astronaut frames only), else None.
    """

    image: np.ndarray
    kind: str
    face: tuple[float, float, float, float] | None
    eyes: np.ndarray | None = None


def astronaut() -> np.ndarray:
    """astronaut.png as BGR uint8 ``[512, 512, 3]``."""
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def lfw(faces: bool = True) -> np.ndarray:
    """The 100 LFW faces (or the 100 non-faces) of scikit-image's ``lfw_subset``, uint8 ``[100, 25, 25]``."""
    images = data.lfw_subset()
    part = images[:100] if faces else images[100:]
    return np.round(part * 255).astype(np.uint8)


def lfw_canvas(patch: np.ndarray, face_side: int = 96, canvas: int = 192) -> np.ndarray:
    """An LFW patch upscaled to ``face_side`` pixels in the centre of a mid-grey BGR square."""
    big = cv2.resize(patch, (face_side, face_side), interpolation=cv2.INTER_CUBIC)
    out = np.full((canvas, canvas), 128, np.uint8)
    o = (canvas - face_side) // 2
    out[o:o + face_side, o:o + face_side] = big
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def place_astronaut(width: int, height: int, face_width: float, centre: tuple[float, float],
                    angle_deg: float = 0.0, source: np.ndarray | None = None) -> SceneFrame:
    """The astronaut warped so her face is ``face_width`` wide, centred at ``centre``, turned by ``angle_deg``.

    Positive angles turn the face counter-clockwise on screen. The known face region is the
    bounding box of the turned face rectangle.
    """
    src = astronaut() if source is None else source
    scale = face_width / _FACE_WIDTH
    m = cv2.getRotationMatrix2D(_FACE_CENTRE, angle_deg, scale)
    m[:, 2] += np.array(centre) - np.array(_FACE_CENTRE)
    image = cv2.warpAffine(src, m, (width, height), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
    x0, y0, x1, y1 = ASTRONAUT_FACE
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ m.T
    face = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
            float(corners[:, 1].max()))
    eyes = (np.hstack([ASTRONAUT_EYES, np.ones((2, 1), np.float32)]) @ m.T).astype(np.float32)
    return SceneFrame(image, "still", face, eyes)


def _still(image: np.ndarray, width: int, height: int, kind: str, shift: float = 0.0) -> SceneFrame:
    """A face-free picture filling the frame, panned ``shift`` pixels."""
    h, w = image.shape[:2]
    scale = max(width / w, height / h) * 1.3
    m = np.array([[scale, 0, -shift], [0, scale, 0]], np.float64)
    return SceneFrame(cv2.warpAffine(image, m, (width, height), borderMode=cv2.BORDER_REFLECT101), kind, None)


def title_card(width: int, height: int, text: str, shade: int = 20) -> SceneFrame:
    """A title card: large text on a dark background, the kind of frame a cascade takes for faces."""
    image = np.full((height, width, 3), shade, np.uint8)
    scale = width / 260
    lines = text.split("\n")
    for i, line in enumerate(lines):
        y = int(height * (i + 1) / (len(lines) + 1) + 12 * scale)
        cv2.putText(image, line, (int(8 * scale), y), cv2.FONT_HERSHEY_DUPLEX, 1.1 * scale, (235, 235, 235),
                    max(1, int(2 * scale)), cv2.LINE_AA)
    return SceneFrame(image, "text", None)


def occlude_half(frame: SceneFrame) -> SceneFrame:
    """The frame with a hand-coloured block over the left half of the known face region."""
    image = frame.image.copy()
    x0, y0, x1, y1 = frame.face
    cv2.rectangle(image, (int(x0) - 4, int(y0) - 4), (int((x0 + x1) / 2), int(y1) + 4), (120, 150, 200), -1)
    return SceneFrame(image, "occluded", frame.face, frame.eyes)


def _astro(width, height, kind, face_width, centre, angle=0.0, source=None) -> SceneFrame:
    f = place_astronaut(width, height, face_width, centre, angle, source)
    f.kind = kind
    return f


def real_face_video(width: int = 240, height: int = 180) -> list[SceneFrame]:
    """A 175-frame video: still, pan, zoom, rotation, occluder, cuts to no face, text and LFW faces.

    Every scene starts with a cut except the moves within the astronaut's shots.
    """
    src = astronaut()
    cx, cy, fw = width / 2, height / 2, 0.33 * width
    # Scene lengths are not multiples of a detect-every of 5: cuts fall between scheduled detections.
    frames = [_astro(width, height, "still", fw, (cx, cy), source=src) for _ in range(8)]
    frames += [_astro(width, height, "pan", fw, (0.3 * width + 0.4 * width * t / 23, cy), source=src)
               for t in range(24)]
    frames += [_still(data.coffee()[:, :, ::-1], width, height, "no_face", 2.0 * t) for t in range(19)]
    frames += [_astro(width, height, "zoom", (0.18 + 0.32 * t / 20) * width, (cx, cy), source=src)
               for t in range(21)]
    frames += [title_card(width, height, "CHAPTER TWO\nThe Crew") for _ in range(10)]
    frames += [title_card(width, height, "8 O'CLOCK\nLIVE", shade=60) for _ in range(9)]
    frames += [_astro(width, height, "rotate", fw, (cx, cy), angle=-30 + 60 * t / 24, source=src)
               for t in range(25)]
    frames += [_still(data.rocket()[:, :, ::-1], width, height, "no_face", 1.5 * t) for t in range(14)]
    still = _astro(width, height, "still", fw, (cx, cy), source=src)
    frames += [occlude_half(still) for _ in range(15)]
    frames += [still] * 6
    side = int(0.45 * height)
    # Cuts between LFW faces, each shot on another backdrop, as shots of a real video differ.
    backdrops = (data.brick() // 2 + 120, data.grass() // 3, data.gravel() // 2 + 60, data.brick() // 3 + 30)
    for i, (index, backdrop) in enumerate(zip((3, 17, 41, 58), backdrops)):
        image = _still(cv2.cvtColor(backdrop, cv2.COLOR_GRAY2BGR), width, height, "lfw").image
        face_image = cv2.resize(lfw()[index], (side, side), interpolation=cv2.INTER_CUBIC)
        ox, oy = (width - side) // 2 + (i % 2 * 2 - 1) * width // 8, (height - side) // 2
        image[oy:oy + side, ox:ox + side] = face_image[:, :, None]
        frames += [SceneFrame(image, "lfw", (ox, oy, ox + side, oy + side)) for _ in range(6)]
    return frames


def centre_in(box_norm: tuple[float, float, float, float], face: tuple[float, float, float, float],
              width: int, height: int, slack: float = 0.0) -> bool:
    """Whether a normalised ``(ymin, xmin, ymax, xmax)`` box has its centre inside ``face`` (pixels, widened)."""
    ymin, xmin, ymax, xmax = box_norm
    cx, cy = (xmin + xmax) / 2 * width, (ymin + ymax) / 2 * height
    x0, y0, x1, y1 = face
    sx, sy = slack * (x1 - x0), slack * (y1 - y0)
    return x0 - sx <= cx <= x1 + sx and y0 - sy <= cy <= y1 + sy
