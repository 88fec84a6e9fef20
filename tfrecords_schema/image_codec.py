"""How a record's face crops are stored (``image/format``): JPEG, or the raw uint8 RGB pixels.

* ``jpeg`` (the default): each crop JPEG-encoded (quality 90 by default: about 4-6 KiB at 112², 4.2 KB on real
  footage; decoded on the training host's CPU at roughly 4,000-6,000 frames per CPU-second);
* ``raw``: the crop's uint8 RGB bytes, row-major ``[S, S, 3]`` (``S² × 3`` bytes: 37,632 at 112²), which the trainer
  turns into pixels with a reshape (``tf.io.decode_raw``): about 6-9× the bytes on disk, a small fraction of the CPU.

A conversion writes one codec (``dataset_info.json`` ``options.codec``; each record says its own in
``image/format``). Readers choose the decoding by it: :func:`decode_crop` here (NumPy, for tools and tests),
:func:`trainer.input.frames.decode_frames` in the trainer's tf.data pipelines. Records of schema versions 1-3
have no ``image/format`` and are JPEG.
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


def decode_crop(data: bytes, codec: str, crop_size: int) -> np.ndarray:
    """One stored crop → uint8 RGB ``[S, S, 3]``, as the trainer decodes it (:data:`JPEG_DCT_METHOD`).

    Raises:
        ValueError: a raw crop that is not ``crop_size² × 3`` bytes, or a JPEG of another size.
    """
    if check_codec(codec) == CODEC_RAW:
        if len(data) != raw_frame_bytes(crop_size):
            raise ValueError(f"a raw crop of {len(data)} bytes is not {crop_size}x{crop_size}x3")
        return np.frombuffer(data, np.uint8).reshape(crop_size, crop_size, 3)
    import tensorflow as tf

    image = tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT_METHOD).numpy()
    if image.shape != (crop_size, crop_size, 3):
        raise ValueError(f"a JPEG crop of shape {image.shape} is not {crop_size}x{crop_size}x3")
    return image
