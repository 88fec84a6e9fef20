"""Per clip: which frames a sequence takes, their decoding, and the per-head targets and weights.

A *window* is ``seq_len`` frames of one parsed clip (:func:`tfrecords_schema.make_clip_parser`): the
training pipeline takes one random window per clip (:func:`random_window`), evaluation cuts every clip
into consecutive windows (:func:`eval_windows`). Frames past the clip end are padding (a suffix, weight 0).
Frames are masked, never dropped, so time never shifts.

Weights (:func:`targets_and_weights`): a frame weighs 0 where the head's label is invalid or the frame is
padding. In training (``require_face=True``) a frame without a face weighs 0 too; in evaluation it counts,
predicted by the model on its stored crop (the crop at the last-seen face place, or the blank crop before
any face): the benchmark scores every annotated frame, and prediction on new video uses the same rule.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from tfrecords_schema.image_codec import CODEC_JPEG, CODEC_RAW, JPEG_DCT_METHOD, check_codec, raw_frame_bytes


def random_window(clip: dict, seed: tf.Tensor, seq_len: int) -> dict:
    """Picks ``seq_len`` frames: random offset, stride 1-2 when the clip is long enough, padding if short."""
    n = tf.shape(clip["image"])[0]
    return gather_frames(clip, random_window_indices(n, seed, seq_len), n)


def window_spans_clip(clip_length: int, seq_len: int) -> bool:
    """Whether one window of ``seq_len`` frames takes (nearly) all of a clip of ``clip_length``: the clip holds less
    than two windows. Then reading a record whole serves its one window; else most of a raw record read for one
    window serves nothing (``train --windows_per_clip``, ``input-rate``'s hint)."""
    return clip_length < 2 * seq_len


def random_window_indices(n: tf.Tensor, seed: tf.Tensor, seq_len: int) -> tf.Tensor:
    """The ``seq_len`` frame indices of a random window of a clip of ``n`` frames (may run past its end).

    One draw for every pipeline that windows clips (frames here, per-frame features in the sequence stage), so
    their windows follow the same distribution.
    """
    stride_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    long_enough = n >= 2 * (seq_len - 1) + 1
    stride = tf.where(long_enough, tf.random.stateless_uniform([], stride_seed, 1, 3, tf.int32), 1)
    max_offset = tf.maximum(n - ((seq_len - 1) * stride + 1), 0)
    offset = tf.random.stateless_uniform([], offset_seed, 0, max_offset + 1, tf.int32)
    return offset + stride * tf.range(seq_len)


def eval_windows(clip: dict, seq_len: int) -> dict:
    """Cuts a clip into consecutive windows ``[W, seq_len]`` covering every frame once (last one padded).

    Each window also carries the clip's ``example_id`` and ``media_id`` (scalars per window).
    """
    n = tf.shape(clip["image"])[0]
    num_windows = (n + seq_len - 1) // seq_len
    indices = tf.reshape(tf.range(num_windows * seq_len), [num_windows, seq_len])
    windows = tf.map_fn(lambda idx: gather_frames(clip, idx, n), indices,
                        fn_output_signature=_window_signature(clip, seq_len))
    windows["example_id"] = tf.fill([num_windows], clip["example_id"])
    windows["media_id"] = tf.fill([num_windows], clip["media_id"])
    return windows


def _window_signature(clip: dict, seq_len: int) -> dict:
    signature = {
        "image": tf.TensorSpec([seq_len], tf.string),
        "num_valid": tf.TensorSpec([], tf.int32),
        "frame_index": tf.TensorSpec([seq_len], tf.int64),
        "has_face": tf.TensorSpec([seq_len], tf.bool),
        "expression": tf.TensorSpec([seq_len], tf.int64),
        "valence_arousal": tf.TensorSpec([seq_len, 2], tf.float32),
    }
    if _has_action_units(clip):
        signature["action_units"] = tf.TensorSpec([seq_len, clip["action_units"].shape[-1]], tf.int64)
    return signature


def _has_action_units(clip: dict) -> bool:
    # A dataset without AUs parses to [T, 0]; such zero-size elements are left out of the windows, since
    # stacking them in tf.map_fn crashes TF 2.17 (segmentation fault in the eval pipeline, seen here).
    return clip["action_units"].shape[-1] != 0


def gather_frames(clip: dict, indices: tf.Tensor, n: tf.Tensor, with_image: bool = True) -> dict:
    """The frames at increasing ``indices`` ``[T]`` (or ``[K, T]``: K windows at once, every field gets the leading
    ``K``); indices past the clip end (``n``) are padding (a suffix).

    A padding frame's ``image`` repeats the clip's last crop rather than becoming an empty string (no second copy of
    large raw crops): :func:`decode_frames` makes it 0, and the other fields mark it (``num_valid``, ``frame_index``
    -1, ``has_face`` False). Without ``with_image`` the window holds its labels only (:func:`source_window` decodes).
    """
    valid = indices < n
    safe = tf.minimum(indices, n - 1)
    return {
        **({"image": tf.gather(clip["image"], safe)} if with_image else {}),
        "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1),
        "frame_index": tf.where(valid, tf.gather(clip["frame_index"], safe), -1),
        "has_face": tf.logical_and(valid, tf.gather(clip["has_face"], safe)),
        "expression": tf.gather(clip["expression"], safe),
        "valence_arousal": tf.gather(clip["valence_arousal"], safe),
        **({"action_units": tf.gather(clip["action_units"], safe)} if _has_action_units(clip) else {}),
    }


def labels_of(window: dict) -> dict:
    """The window without its encoded crops: what :func:`targets_and_weights` needs, batchable after decoding."""
    return {k: v for k, v in window.items() if k != "image"}


def _raw_pixels(images: tf.Tensor, valid: tf.Tensor, crop_size: int) -> tf.Tensor:
    """uint8 ``[..., S, S, 3]`` of raw crops ``[...]`` (``valid`` ones checked to hold ``S² × 3`` bytes; others, e.g.
    empty padding strings, become zeros)."""
    size = raw_frame_bytes(crop_size)
    actual = tf.strings.length(images)
    check = tf.debugging.assert_equal(
        tf.where(valid, actual, size), size,
        message=f"raw crops must be {crop_size}x{crop_size}x3 = {size} bytes (dataset_info.json's crop_size)")
    with tf.control_dependencies([check]):
        # fixed_length zero-fills its output before copying (a second pass over every byte): only where a string
        # is short (padding).
        frames = tf.cond(tf.reduce_all(actual == size),
                         lambda: tf.io.decode_raw(images, tf.uint8),
                         lambda: tf.io.decode_raw(images, tf.uint8, fixed_length=size))
    return tf.reshape(frames, tf.concat([tf.shape(images), [crop_size, crop_size, 3]], 0))


def _zero_padding(frames: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """``frames`` ``[..., T, S, S, 3]`` with the frames not ``valid`` ``[..., T]`` set to 0 (no copy when all are)."""
    return tf.cond(tf.reduce_all(valid), lambda: frames,
                   lambda: frames * tf.cast(valid, frames.dtype)[..., None, None, None])


def clip_source(clip: dict, n: tf.Tensor, crop_size: int, codec: str = CODEC_JPEG,
                decode_jpeg: bool = False) -> tf.Tensor:
    """What :func:`source_window` cuts several windows of a parsed clip of ``n`` frames from (repeated sampling).

    The clip's pixels, uint8 ``[n, S, S, 3]``, each crop decoded once, so that overlapping windows share the work and
    a window costs one copy of its pixels (none for a window of stride 1): raw crops always (a reshape), JPEG crops
    with ``decode_jpeg`` (worth it when the windows take at least as many frames as the clip holds: 8 windows of 16
    from a 64-frame clip decode 64 crops rather than 128). Otherwise the encoded crops ``[n]``, each window
    decoding its own.
    """
    if check_codec(codec) == CODEC_RAW:
        return _raw_pixels(clip["image"], tf.ones([n], tf.bool), crop_size)
    if not decode_jpeg:
        return clip["image"]
    return _decode_jpegs(clip["image"], crop_size)


def _decode_jpegs(jpegs: tf.Tensor, crop_size: int) -> tf.Tensor:
    """uint8 ``[N, S, S, 3]`` of the JPEG crops ``[N]``.

    The accurate integer IDCT (TensorFlow's default is the fast one): the pixels OpenCV and libjpeg-turbo's own
    default give, so predict's TensorFlow-free runtime decodes exactly these (trainer.prediction.serving).
    """
    frames = tf.map_fn(lambda b: tf.io.decode_jpeg(b, channels=3, dct_method=JPEG_DCT_METHOD), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return tf.ensure_shape(frames, [None, crop_size, crop_size, 3])


def source_window(source: tf.Tensor, indices: tf.Tensor, crop_size: int, seq_len: int,
                  codec: str = CODEC_JPEG) -> tf.Tensor:
    """uint8 ``[T, S, S, 3]``: the window at increasing ``indices`` ``[T]`` of a :func:`clip_source`, padding (indices
    past the clip's end, a suffix) 0: the frames :func:`decode_frames` gives for the same window."""
    n = tf.shape(source)[0]
    valid = indices < n
    if source.dtype == tf.uint8:
        # A whole window of stride 1 is a slice of the clip's pixels: TensorFlow shares the buffer of an aligned
        # first-dimension slice (no copy: the batch makes the window's one copy); other windows are gathered.
        contiguous = tf.logical_and(indices[-1] < n, indices[-1] - indices[0] == seq_len - 1)
        crops = tf.cond(contiguous, lambda: tf.slice(source, [indices[0], 0, 0, 0], [seq_len, -1, -1, -1]),
                        lambda: _zero_padding(tf.gather(source, tf.minimum(indices, n - 1)), valid))
        return tf.ensure_shape(crops, [seq_len, crop_size, crop_size, 3])
    crops = tf.gather(source, tf.minimum(indices, n - 1))
    return decode_frames({"image": crops, "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32))}, crop_size, seq_len,
                         codec)


def decode_frames(window: dict, crop_size: int, seq_len: int, codec: str = CODEC_JPEG) -> tf.Tensor:
    """Decodes the valid frames of a window to uint8 ``[T, S, S, 3]``; padding frames (past ``num_valid``) are 0.

    The trainer's one decoding of stored crops, by the data's ``codec`` (:mod:`tfrecords_schema.image_codec`):
    ``jpeg`` decodes each valid frame's JPEG (:data:`tfrecords_schema.image_codec.JPEG_DCT_METHOD`); ``raw``
    reinterprets the window's bytes as pixels in one ``tf.io.decode_raw`` (an empty string, as ``predict`` pads its
    last window, becomes zeros), after checking that every valid frame holds ``S² × 3`` bytes (a frame of another size
    fails the pipeline, naming the sizes).
    """
    if check_codec(codec) == CODEC_RAW:
        valid = tf.range(seq_len) < window["num_valid"]
        frames = _zero_padding(_raw_pixels(window["image"], valid, crop_size), valid)
        return tf.ensure_shape(frames, [seq_len, crop_size, crop_size, 3])
    frames = _decode_jpegs(window["image"][: window["num_valid"]], crop_size)
    frames = tf.pad(frames, [[0, seq_len - window["num_valid"]], [0, 0], [0, 0], [0, 0]])
    return tf.ensure_shape(frames, [seq_len, crop_size, crop_size, 3])


def targets_and_weights(window: dict, heads: tuple[str, ...], num_classes: int,
                        expression_weights: np.ndarray | None, *, require_face: bool):
    """Per-head targets (invalid -> 0) and float32 weights ``[T]`` (or ``[B, T]`` for a batch of windows).

    Works on one window or on a batch of them (every field with a leading ``B``): the training and
    evaluation pipelines call it once per batch, which costs a fraction of the per-clip calls.

    A weight is 0 for an invalid label or a padding frame, and, with ``require_face``, for a frame without
    a face; else 1 (times the class weight of the expression when ``expression_weights`` is given).

    A label is valid when it is in range: expression in ``[0, classes)``, valence and arousal in ``[-1, 1]``,
    every AU 0 or 1. The schema's invalid markers (``keys.EXPRESSION_INVALID``, ``VA_INVALID``,
    ``AU_INVALID``) all fall outside, and so does any other out-of-range value.

    Args:
        window: One window (:func:`gather_frames`, ``image`` not needed) or a batch of them.
        heads: The heads to build.
        num_classes: Expression classes.
        expression_weights: float ``[classes]`` loss weights, or None.
        require_face: Weigh frames without a face 0. The training loss does (a no-face frame's crop is
            blank or held at the last face place, so it does not show the labelled face and would teach
            noise); metrics do not (the benchmark scores every annotated frame).
    """
    usable = _not_padding(window)
    if require_face:
        usable = tf.logical_and(usable, window["has_face"])
    valid = _valid_labels(window, heads, num_classes)
    targets, weights = {}, {}
    if HEAD_EXPRESSION in heads:
        targets[HEAD_EXPRESSION] = tf.cast(tf.where(valid[HEAD_EXPRESSION], window["expression"], 0), tf.int32)
        weight = tf.cast(tf.logical_and(valid[HEAD_EXPRESSION], usable), tf.float32)
        if expression_weights is not None:
            weight *= tf.gather(tf.constant(expression_weights, tf.float32), targets[HEAD_EXPRESSION])
        weights[HEAD_EXPRESSION] = weight
    if HEAD_VALENCE_AROUSAL in heads:
        targets[HEAD_VALENCE_AROUSAL] = tf.where(valid[HEAD_VALENCE_AROUSAL][..., None], window["valence_arousal"], 0.0)
        weights[HEAD_VALENCE_AROUSAL] = tf.cast(tf.logical_and(valid[HEAD_VALENCE_AROUSAL], usable), tf.float32)
    if HEAD_ACTION_UNITS in heads:
        au = window["action_units"]
        targets[HEAD_ACTION_UNITS] = tf.cast(tf.where(valid[HEAD_ACTION_UNITS][..., None], au, 0), tf.float32)
        weights[HEAD_ACTION_UNITS] = tf.cast(tf.logical_and(valid[HEAD_ACTION_UNITS], usable), tf.float32)
    return targets, weights


def labelled_frames(window: dict, num_classes: int) -> tf.Tensor:
    """bool ``[..., T]``: the window's frames (not padding) with a valid label of any task the records hold, valid as
    :func:`targets_and_weights` judges it. These are the frames the conversion counts as written labelled frames
    (``dataset_info.json``'s accounting), whatever heads a model has: an evaluation that reads fewer of them than were
    written lost the rest to skipped records (:mod:`trainer.evaluation.coverage`)."""
    tasks = [HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL] + ([HEAD_ACTION_UNITS] if "action_units" in window else [])
    valid = _valid_labels(window, tasks, num_classes)
    return tf.logical_and(_not_padding(window), tf.reduce_any(tf.stack([valid[t] for t in tasks]), axis=0))


def _not_padding(window: dict) -> tf.Tensor:
    return tf.sequence_mask(window["num_valid"], window["has_face"].shape[-1])


def _valid_labels(window: dict, heads, num_classes: int) -> dict[str, tf.Tensor]:
    """bool ``[..., T]`` per head in ``heads``: the frame's label for it is in range (:func:`targets_and_weights`)."""
    valid = {}
    if HEAD_EXPRESSION in heads:
        label = window["expression"]
        valid[HEAD_EXPRESSION] = tf.logical_and(label >= 0, label < num_classes)
    if HEAD_VALENCE_AROUSAL in heads:
        va = window["valence_arousal"]
        valid[HEAD_VALENCE_AROUSAL] = tf.reduce_all(tf.logical_and(va >= -1.0, va <= 1.0), axis=-1)
    if HEAD_ACTION_UNITS in heads:
        au = window["action_units"]
        valid[HEAD_ACTION_UNITS] = tf.reduce_all(tf.logical_and(au >= 0, au <= 1), axis=-1)
    return valid
