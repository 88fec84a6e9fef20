"""How a record's face crops are stored (``image/format``): JPEG, or the raw uint8 RGB pixels.

* ``jpeg`` (the default): each crop JPEG-encoded (quality 90 by default: about 4-6 KiB at 112², 4.2 KB on real
  footage; decoded on the training host's CPU at roughly 4,000-6,000 frames per CPU-second);
* ``raw``: the crop's uint8 RGB bytes, row-major ``[S, S, 3]`` (``S² × 3`` bytes: 37,632 at 112²), which the trainer
  turns into pixels with a reshape (``tf.io.decode_raw``): about 6-9× the bytes on disk, a small fraction of the CPU.

A conversion writes one codec (``dataset_info.json`` ``options.codec``; each record says its own in
``image/format``). Readers choose the decoding by it: :func:`decode_crop` here (NumPy and OpenCV: tools, tests,
``predict``'s TF Lite runtime), :func:`trainer.input.frames.decode_frames` in the trainer's tf.data pipelines; both
give the same pixels. Records of schema versions 1-3 have no ``image/format`` and are JPEG.
"""

from __future__ import annotations

import math

import numpy as np

CODEC_JPEG = "jpeg"
CODEC_RAW = "raw"
CODECS = (CODEC_JPEG, CODEC_RAW)
DEFAULT_CODEC = CODEC_JPEG
# Every reader decodes JPEG crops with libjpeg-turbo's accurate integer IDCT (TensorFlow's "INTEGER_ACCURATE"; its
# default is the fast one): the pixels OpenCV's and libjpeg-turbo's own defaults give, so the trainer (TensorFlow) and
# predict's TensorFlow-free runtime (OpenCV) feed a model the same pixels.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def check_codec(codec: str) -> str:
    """``codec`` when it is one of :data:`CODECS`; else ValueError naming the valid ones."""
    if codec not in CODECS:
        raise ValueError(f"unknown image codec {codec!r}; valid codecs: {', '.join(CODECS)}")
    return codec


def raw_frame_bytes(crop_size: int) -> int:
    """Bytes of one raw crop: ``crop_size² × 3``."""
    return crop_size * crop_size * 3


def crop_shape(data: bytes, codec: str) -> tuple[int, int]:
    """``(height, width)`` of one stored crop, without decoding its pixels.

    A raw crop is square by construction: its side is ``sqrt(len / 3)``; bytes that make no square give
    ``(0, len)`` so that a size check names them as wrong.
    """
    if check_codec(codec) == CODEC_RAW:
        side = math.isqrt(len(data) // 3)
        return (side, side) if raw_frame_bytes(side) == len(data) else (0, len(data))
    import tensorflow as tf

    height, width, _ = tf.io.extract_jpeg_shape(data).numpy().tolist()
    return int(height), int(width)


def decode_crop(data: bytes, codec: str, crop_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """One stored crop → uint8 RGB ``[S, S, 3]``, the pixels the trainer decodes (:data:`JPEG_DCT_METHOD`), without
    TensorFlow: OpenCV's libjpeg-turbo decodes JPEG with the same accurate IDCT (``predict``'s TF Lite runtime decodes
    its batches here; ``tests/test_predict.py`` checks the pixels against the trainer's decode).

    Args:
        out: Where to write the pixels (a ``[S, S, 3]`` uint8 view, e.g. into a batch); default: a new array.

    Raises:
        ValueError: a raw crop that is not ``crop_size² × 3`` bytes, or a JPEG that does not decode to that size.
    """
    size = (crop_size, crop_size, 3)
    out = np.empty(size, np.uint8) if out is None else out
    if check_codec(codec) == CODEC_RAW:
        if len(data) != raw_frame_bytes(crop_size):
            raise ValueError(f"a raw crop of {len(data)} bytes is not {crop_size}x{crop_size}x3")
        out[...] = np.frombuffer(data, np.uint8).reshape(size)
        return out
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != size:
        raise ValueError(f"a JPEG crop that does not decode to {crop_size}x{crop_size}x3 "
                         f"({'undecodable' if bgr is None else f'shape {bgr.shape}'})")
    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)
    return out
