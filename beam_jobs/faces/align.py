"""The face crops (square and eye-aligned), the blank crop, fast shrinking and the stored crop's encoding.

No Apache Beam import: the conversion and inference on new video both cut crops here, so
the crop a model is trained on is the crop it is served (:func:`face_crop` is the one crop
function of the project; :func:`square_crop` and :func:`aligned_crop` are its two modes).

Example:
    crop = face_crop(frame, det.box, det.keypoints, 112, align=True)
    jpeg = encode_jpeg(crop)
"""

from __future__ import annotations

import math

# cv2 is imported in the functions that use it (a dict lookup once loaded): importing this module, as
# `affectstream convert --help` does, must not load OpenCV.
import numpy as np

# A box in pixels of the frame it was found in: (x, y, width, height).
Box = tuple[float, float, float, float]

# Aligned-crop template, as fractions of the crop side (the ABAW "cropped_aligned" look): the eyes
# level, their midpoint centred at this height, this far apart. Brows to chin fit in the crop.
ALIGN_EYE_Y = 0.40
ALIGN_EYE_DISTANCE = 0.33
# Expected eye distance / box side of a frontal face (BlazeFace 0.43-0.47, MTCNN ~0.49 of the box
# width). The measured distance is kept within [1/RANGE, RANGE] x this, so a profile (eyes
# nearly on top of each other in the image) or a bad keypoint does not blow the crop up.
_EYES_PER_BOX = 0.45
_EYE_RANGE = 1.4


def square_crop(image: np.ndarray, box: Box | None, crop_size: int, margin: float = 1.25) -> np.ndarray:
    """The square face crop: centred on ``box``, side ``margin * max(w, h)``, resized to ``crop_size``.

    Parts of the square outside the image are filled with black, so the face keeps
    its place and scale near the border. ``box=None`` crops the largest centred square.

    Args:
        image: ``[H, W]`` or ``[H, W, C]`` uint8.
        box: ``(x, y, w, h)`` in pixels of ``image``, or None.
        crop_size: Output side in pixels.
        margin: Square side relative to the larger box side.

    Returns:
        ``[crop_size, crop_size(, C)]`` uint8.
    """
    import cv2

    if crop_size <= 0:
        raise ValueError(f"crop_size must be > 0, got {crop_size}")
    h, w = image.shape[:2]
    if box is None:
        side = float(min(h, w))
        cx, cy = w / 2.0, h / 2.0
    else:
        side = max(box[2], box[3]) * margin
        cx, cy = box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
    side = max(side, 1.0)
    x0, y0 = round(float(cx - side / 2)), round(float(cy - side / 2))  # (Python floats: round gives an int.)
    s = round(float(side))
    x1, y1 = x0 + s, y0 + s
    pad = [max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w)]
    crop = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if any(pad):
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_CONSTANT, value=0)
    if s <= crop_size:
        return cv2.resize(crop, (crop_size, crop_size), interpolation=cv2.INTER_LINEAR)
    factor = s // crop_size
    if factor > 1:
        # Area-averaging by a whole factor first takes OpenCV's fast path (half the time of one
        # fractional INTER_AREA resize, and within half a grey level of it); the last step is small.
        crop = cv2.resize(crop, (s // factor, s // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(crop, (crop_size, crop_size), interpolation=cv2.INTER_AREA)


def alignment_matrix(eyes: np.ndarray, crop_size: int, box: Box | None = None) -> np.ndarray:
    """The 2x3 similarity transform (frame pixels → crop pixels) of :func:`aligned_crop`.

    Args:
        eyes: ``[2, 2]`` ``(x, y)`` of the subject's right eye (image left) then left eye.
        crop_size: Crop side in pixels.
        box: The face box, bounding the scale taken from the eye distance (None: unbounded).
    """
    # Python floats: the same IEEE doubles as NumPy's float64 scalars, without their per-operation overhead.
    (rx, ry), (lx, ly) = np.asarray(eyes, np.float64)[:2].tolist()
    dx, dy = lx - rx, ly - ry
    distance = math.hypot(dx, dy)
    if box is not None:
        expected = _EYES_PER_BOX * max(box[2], box[3])
        distance = min(max(distance, expected / _EYE_RANGE), expected * _EYE_RANGE)
    if not distance > 0:
        raise ValueError(f"eyes at the same place {eyes.tolist()}: no alignment")
    scale = ALIGN_EYE_DISTANCE * crop_size / distance
    angle = math.atan2(dy, dx)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    mx, my = (rx + lx) / 2, (ry + ly) / 2
    # Rotate by -angle about the eye midpoint, scale, and put the midpoint at its template place.
    return np.array([[c, s, crop_size / 2 - (c * mx + s * my)],
                     [-s, c, ALIGN_EYE_Y * crop_size - (-s * mx + c * my)]], np.float64)


def aligned_crop(image: np.ndarray, eyes: np.ndarray, crop_size: int, box: Box | None = None) -> np.ndarray:
    """The eye-aligned crop: eyes level at :data:`ALIGN_EYE_Y`, :data:`ALIGN_EYE_DISTANCE` apart.

    One ``cv2.warpAffine`` rotates, scales and cuts; outside the image is black. A face more
    than twice the crop's scale is first shrunk on the region the crop covers by the largest
    power-of-two factor that leaves the warp at most a halving, in 2x area steps (OpenCV's
    fast area path; other whole factors take its slow path, ~10x the time: ~0.5 ms against
    ~0.05 ms on a 720p face), so the warp does not alias; that keeps crops of one face alike
    whatever the video resolution.

    Args:
        image: ``[H, W, C]`` or ``[H, W]`` uint8.
        eyes: ``[2, 2]`` (or more rows; the first two are used) eye positions in pixels of ``image``.
        crop_size: Output side in pixels.
        box: The face box ``(x, y, w, h)``, bounding the scale (see :func:`alignment_matrix`).
    """
    import cv2

    if crop_size <= 0:
        raise ValueError(f"crop_size must be > 0, got {crop_size}")
    m = alignment_matrix(eyes, crop_size, box)
    (a, b, tx), (c, d, ty) = m.tolist()
    factor = 1 << max(0, int(math.log2(1.0 / math.hypot(a, b))))
    if factor >= 2:
        # The source region the crop covers: the inverse-mapped crop corners (a similarity's
        # inverse: transpose over the squared scale), cut to whole multiples of the factor.
        s2 = a * a + b * b
        xs, ys = [], []
        for u, v in ((0, 0), (crop_size, 0), (0, crop_size), (crop_size, crop_size)):
            xs.append((a * (u - tx) + c * (v - ty)) / s2)
            ys.append((b * (u - tx) + d * (v - ty)) / s2)
        h, w = image.shape[:2]
        x0, y0 = max(0, int(min(xs)) - 1), max(0, int(min(ys)) - 1)
        x1, y1 = min(w, int(max(xs)) + 2), min(h, int(max(ys)) + 2)
        nw, nh = (x1 - x0) // factor, (y1 - y0) // factor
        if nw >= 1 and nh >= 1:
            image = image[y0:y0 + nh * factor, x0:x0 + nw * factor]
            while image.shape[1] > nw:
                image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
            # Crop pixel = m @ (factor * small + origin): fold the shrink into the transform.
            m = np.array([[a * factor, b * factor, tx + a * x0 + b * y0],
                          [c * factor, d * factor, ty + c * x0 + d * y0]], np.float64)
    return cv2.warpAffine(image, m, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def face_crop(image: np.ndarray, box: Box, keypoints: np.ndarray | None, crop_size: int,
              align: bool) -> np.ndarray:
    """THE face crop of the project: aligned on the eyes when asked and known, else square on the box.

    Without eye keypoints (the Haar detector gives none) an aligned stage falls back to the
    square crop of the box: a crop is always produced, and from the stored box.
    """
    if align and keypoints is not None and len(keypoints) >= 2:
        return aligned_crop(image, keypoints, crop_size, box)
    return square_crop(image, box, crop_size)


def shrink(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resizes down to ``(width, height)`` by bilinear halvings, then one bilinear step.

    A bilinear halving averages 2x2 pixels (a box filter), so this does not alias, at a
    fraction of the cost of one fractional ``INTER_AREA`` resize (OpenCV 4.11: ~0.45 ms
    against ~4.5 ms from 720p to 192x108).
    """
    import cv2

    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(image, ((image.shape[1] + 1) // 2, (image.shape[0] + 1) // 2),
                           interpolation=cv2.INTER_LINEAR)
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def blank_crop(crop_size: int, channels: int = 3) -> np.ndarray:
    """A black crop for frames where no face was ever seen."""
    return np.zeros((crop_size, crop_size, channels), np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG-encodes a BGR (or gray) uint8 image; deterministic for the same pixels."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def encode_crop(image: np.ndarray, codec: str = "jpeg", quality: int = 90) -> bytes:
    """A BGR uint8 crop as a record stores it (:mod:`tfrecords_schema.image_codec`): JPEG at ``quality``, or for
    ``raw`` its uint8 **RGB** bytes, row-major ``[S, S, 3]`` (what the trainer's reshape turns back into pixels)."""
    import cv2

    from tfrecords_schema.image_codec import CODEC_RAW, check_codec

    if check_codec(codec) != CODEC_RAW:
        return encode_jpeg(image, quality)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"a raw crop must be uint8 [S, S, 3] BGR, got {image.dtype} {image.shape}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).tobytes()


def decode_image(data: bytes) -> np.ndarray | None:
    """Decodes image bytes to BGR uint8; None when they are not a readable image."""
    import cv2

    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
