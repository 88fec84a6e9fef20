"""An export served on videos: their crops (:mod:`trainer.prediction.crops`: the conversion's face stage rebuilt
from ``model_info.json``, or the dataset's provided crops) decoded exactly as the training records are read, and the
model run on batches of windows (:class:`WindowBatcher`: of one video, or of several at once with ``predict
--workers``, :mod:`trainer.prediction.parallel`).

Two runtimes (``predict --runtime``): the export's TF Lite copy (:mod:`trainer.model.lite`) run without importing
TensorFlow (:class:`LiteWindowPredictor`: a CPU run starts in a fraction of a second), or the Keras model on
TensorFlow (:class:`WindowPredictor`: the GPU when there is one). ``auto`` takes TF Lite when the export has a copy
for the run's ``--batch_size`` and no NVIDIA GPU is present. Both decode JPEG crops with libjpeg-turbo's accurate
integer IDCT, the trainer's decode (OpenCV here, TensorFlow there: the same pixels).
"""

from __future__ import annotations

import array
import collections
import concurrent.futures
import glob
import logging
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from tfrecords_schema.image_codec import check_codec, decode_crop
from trainer.prediction import outputs as preds_lib
from trainer.prediction.crops import FrameCrop, served_crops
from trainer.prediction.errors import PredictUsageError
from trainer.prediction.progress import Progress

log = logging.getLogger("trainer.prediction.serving")

MAX_BATCHES_IN_FLIGHT = 2  # One batch in the model while the next one fills: frames keep flowing.
RUNTIMES = RUNTIME_AUTO, RUNTIME_TFLITE, RUNTIME_TENSORFLOW = "auto", "tflite", "tensorflow"


def load_export(model_dir: str):
    """``(model_info, served crops, export dir)`` of an exported model (or its job dir); the model itself is loaded
    by :func:`load_predictor`.

    Raises:
        PredictError: the export records no crops (made by an older trainer), or their size disagrees with the
            model's (:func:`trainer.prediction.crops.served_crops`).
    """
    from trainer.model.export import check_model_info_fields, read_model_info, resolve_model_dir

    model_dir = resolve_model_dir(model_dir)
    model_info = read_model_info(model_dir)
    check_model_info_fields(model_info, model_dir)
    return model_info, served_crops(model_info, model_dir), model_dir


def nvidia_gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible to this process, without importing TensorFlow (its device nodes)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") not in ("", "-1") and bool(glob.glob("/dev/nvidia[0-9]*"))


def choose_runtime(model_dir: str, model_info: dict, runtime: str, batch_size: int) -> tuple[str, str]:
    """``(runtime, why)``: which runtime serves the export, and why (a note for the summary).

    Raises:
        PredictUsageError: ``tflite`` asked for, and the export has no TF Lite copy for this run.
    """
    from tfrecords_schema import join_path, storage

    lite = model_info.get("tflite") or {}
    if "file" not in lite or "outputs" not in lite:
        unusable = f"the export has no TF Lite copy ({lite.get('error', 'exported before TF Lite copies')})"
    elif not storage.gfile(model_dir).exists(join_path(model_dir, lite["file"])):
        unusable = f"the export's TF Lite copy {lite['file']} is missing"
    elif int(lite["batch_size"]) != batch_size:
        unusable = f"the export's TF Lite copy takes --batch_size {lite['batch_size']}, not {batch_size}"
    else:
        unusable = ""
    if runtime == RUNTIME_TFLITE and unusable:
        raise PredictUsageError(f"--runtime tflite: {unusable}; leave --runtime out to run the Keras model")
    if runtime == RUNTIME_TENSORFLOW:
        return RUNTIME_TENSORFLOW, "--runtime tensorflow"
    if runtime == RUNTIME_AUTO and nvidia_gpu_present():
        return RUNTIME_TENSORFLOW, "a GPU is present"
    if unusable:
        return RUNTIME_TENSORFLOW, unusable
    return RUNTIME_TFLITE, "--runtime tflite" if runtime == RUNTIME_TFLITE else "the export has one and no GPU is here"


def load_predictor(model_dir: str, model_info: dict, asked: str, heads: Sequence[str], seq_len: int, crop_size: int,
                   batch_size: int, codec: str, threads: int):
    """``(predictor, runtime, why, device)``: the window predictor of the runtime :func:`choose_runtime` picks for
    ``asked`` (``--runtime``), why, and where it runs (a phrase for the log). Under ``auto`` a TF Lite copy that does
    not load falls back to the Keras model with a warning.

    Raises:
        PredictUsageError: ``tflite`` asked for, and the export has no TF Lite copy for this run.
        beam_jobs.faces.tflite.TFLiteError: ``tflite`` asked for, and its copy does not load.
    """
    from beam_jobs.faces.tflite import TFLiteError

    runtime, why = choose_runtime(model_dir, model_info, asked, batch_size)
    arguments = (heads, seq_len, crop_size, batch_size, codec, threads)
    try:
        predictor = make_predictor(model_dir, model_info, runtime, *arguments)
    except TFLiteError as e:
        if asked == RUNTIME_TFLITE:
            raise
        log.warning("the export's TF Lite copy does not load (%s): running the Keras model", e)
        runtime, why = RUNTIME_TENSORFLOW, f"the TF Lite copy does not load ({e})"
        predictor = make_predictor(model_dir, model_info, runtime, *arguments)
    if runtime == RUNTIME_TFLITE:
        return predictor, runtime, why, "TF Lite on the CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return predictor, runtime, why, f"TensorFlow on {'GPU ' + gpus[0].name if gpus else 'the CPU'}"


def make_predictor(model_dir: str, model_info: dict, runtime: str, heads: Sequence[str], seq_len: int,
                   crop_size: int, batch_size: int, codec: str, threads: int):
    """The window predictor of ``runtime`` (:func:`choose_runtime`): :class:`LiteWindowPredictor` or
    :class:`WindowPredictor`.

    Raises:
        beam_jobs.faces.tflite.TFLiteError: the TF Lite copy does not load (a damaged file).
    """
    from tfrecords_schema import join_path

    if runtime == RUNTIME_TFLITE:
        lite = model_info["tflite"]
        return LiteWindowPredictor(join_path(model_dir, lite["file"]), lite["outputs"], heads, seq_len, crop_size,
                                   batch_size, codec, threads)
    from trainer.model.export import MODEL_FILENAME, load_export_model

    model = load_export_model(join_path(model_dir, MODEL_FILENAME))
    return WindowPredictor(model, heads, seq_len, crop_size, batch_size, codec)


def batch_slots(windows: Sequence[Sequence[bytes]], batch_size: int) -> list[Sequence[bytes]]:
    """The window of each of a model call's ``batch_size`` slots: a short batch is filled up with copies of its first
    window (both runtimes take one fixed batch shape, and an empty window would not decode)."""
    return [windows[i] if i < len(windows) else windows[0] for i in range(batch_size)]


def kept_frames(slots: Sequence[Sequence[bytes]], real: int, seq_len: int) -> np.ndarray:
    """bool ``[batch, seq_len]``: the frames of the first ``real`` slots' windows (not padding, not filler copies)."""
    keep = np.arange(seq_len)[None, :] < np.array([len(window) for window in slots])[:, None]
    keep[real:] = False
    return keep


class CropError(OSError):
    """A crop that does not decode to the model's input (fails its video, as TensorFlow's decode error does)."""


class LiteWindowPredictor:
    """:class:`WindowPredictor`'s work on the export's TF Lite copy, without TensorFlow: crops decoded into the batch
    by :func:`tfrecords_schema.image_codec.decode_crop` (the trainer's pixels), one interpreter call a batch.

    Args:
        path: The export's ``serving.tflite`` (a local path; a remote one is copied to a temporary file first).
        outputs: The head of each of the copy's output tensors, in order (``model_info.json["tflite"]["outputs"]``).
        threads: TF Lite interpreter threads.
        (the others: :class:`WindowPredictor`'s)
    """

    def __init__(self, path: str, outputs: Sequence[str], heads: Sequence[str], seq_len: int, crop_size: int,
                 batch_size: int, codec: str = "jpeg", threads: int = 1):
        from beam_jobs.faces.tflite import LiteInterpreter
        from trainer.prediction.videos import local_video

        self.heads, self.seq_len, self.batch_size = tuple(heads), seq_len, batch_size
        self.crop_size, self.codec = crop_size, check_codec(codec)
        with local_video(path) as local:  # the interpreter maps the file: a remote copy is read once, here
            self._interpreter = LiteInterpreter(local, threads)
        self._input = self._interpreter.inputs[0]
        self._outputs = dict(zip(outputs, self._interpreter.outputs))
        shape = (batch_size, seq_len, crop_size, crop_size, 3)
        if (self._interpreter.shape(self._input) != shape or len(outputs) != len(self._interpreter.outputs)
                or not set(self.heads) <= set(self._outputs)):
            raise PredictUsageError(f"{path} takes {self._interpreter.shape(self._input)} with outputs "
                                    f"{list(outputs)}, not {shape} with {list(self.heads)}: export the "
                                    "model again, or pass --runtime tensorflow")
        self._frames = np.zeros(shape, np.uint8)

    def _decode(self, crop: bytes, out: np.ndarray) -> None:
        try:
            decode_crop(crop, self.codec, self.crop_size, out)
        except ValueError as e:
            raise CropError(str(e)) from e

    def __call__(self, windows: Sequence[Sequence[bytes]]) -> dict[str, np.ndarray]:
        """Outputs ``{head: [frames, D]}`` of the windows' frames, in order (padding left out)."""
        slots = batch_slots(windows, self.batch_size)
        frames = self._frames
        for i, window in enumerate(slots):
            for j, crop in enumerate(window):
                self._decode(crop, frames[i, j])
            frames[i, len(window):] = 0  # padding frames are 0, as the trainer's decode makes them
        self._interpreter.set(self._input, frames)
        self._interpreter.invoke()
        keep = kept_frames(slots, len(windows), self.seq_len)
        return {h: self._interpreter.get(self._outputs[h])[keep].astype(np.float32) for h in self.heads}


class WindowPredictor:
    """Runs the model on batches of windows of stored crops, decoded and scaled as the trainer reads records.

    Args:
        model: The exported Keras model (``{head: [B, T, D]}`` outputs).
        heads: Heads to return.
        seq_len: Frames per window (the training ``seq_len``).
        crop_size: Side of the crops.
        batch_size: Windows per model call (a short last batch is padded with empty windows, so the
            function is traced once).
        codec: How the crops are encoded (``jpeg`` or ``raw``), as the model's records stored them.
    """

    def __init__(self, model, heads: Sequence[str], seq_len: int, crop_size: int, batch_size: int,
                 codec: str = "jpeg"):
        import tensorflow as tf

        from trainer.input.frames import decode_frames

        self.heads, self.seq_len, self.batch_size = tuple(heads), seq_len, batch_size
        window_spec = tf.TensorSpec([seq_len, crop_size, crop_size, 3], tf.uint8)
        # The trainer's models take the decoded uint8 pixels and scale them in their first layer. Exports made
        # before that change declare a float input and were trained on the pixels divided by 255.
        float_input = tf.as_dtype(model.inputs[0].dtype).is_floating

        @tf.function(input_signature=[tf.TensorSpec([batch_size, seq_len], tf.string),
                                      tf.TensorSpec([batch_size], tf.int32)], autograph=False)
        def run(crops, num_valid):
            frames = tf.map_fn(lambda w: decode_frames(w, crop_size, seq_len, codec),
                               {"image": crops, "num_valid": num_valid}, fn_output_signature=window_spec)
            if float_input:
                frames = tf.cast(frames, tf.float32) * (1.0 / 255.0)
            outputs = model(frames, training=False)
            return {h: outputs[h] for h in self.heads}

        self._run = run

    def __call__(self, windows: Sequence[Sequence[bytes]]) -> dict[str, np.ndarray]:
        """Outputs ``{head: [frames, D]}`` of the windows' frames, in order (padding left out)."""
        import tensorflow as tf

        slots = batch_slots(windows, self.batch_size)
        crops = np.full((self.batch_size, self.seq_len), b"", dtype=object)
        for i, window in enumerate(slots):
            crops[i, :len(window)] = window
        num_valid = np.array([len(window) for window in slots], np.int32)
        outputs = self._run(tf.constant(crops, tf.string), tf.constant(num_valid))
        keep = kept_frames(slots, len(windows), self.seq_len)
        return {h: outputs[h].numpy()[keep].astype(np.float32) for h in self.heads}


class TrackRun:
    """One track's frames as they come: its per-frame facts, its windows, and the model's outputs in frame order.

    Frames are added in order (:meth:`add`), which returns each window of ``seq_len`` frames as it fills, and
    :meth:`receive` takes the outputs of its windows back, in the order they were handed over.
    """

    def __init__(self, heads: Sequence[str], seq_len: int):
        self.seq_len = seq_len
        self.started = time.monotonic()
        self._window: list[bytes] = []
        self.outputs: dict[str, list[np.ndarray]] = {h: [] for h in heads}
        self.windows_out = self.windows_in = 0  # windows handed to the model / whose outputs came back
        # Per-frame facts in compact arrays (about 30 bytes a frame).
        self.timestamps, self.boxes = array.array("q"), array.array("f")
        self.decoded, self.has_face = bytearray(), bytearray()

    def add(self, frame: FrameCrop) -> list[bytes] | None:
        """Adds a frame; returns the window it completes, if it does."""
        self.timestamps.append(frame.timestamp_us)
        self.decoded.append(frame.decoded)
        self.has_face.append(frame.bbox is not None)
        self.boxes.extend((np.nan,) * 4 if frame.bbox is None else frame.bbox)
        self._window.append(frame.crop)
        return self._take_window() if len(self._window) == self.seq_len else None

    def last_window(self) -> list[bytes] | None:
        """The unfinished last window (it will be padded), if any."""
        return self._take_window() if self._window else None

    def _take_window(self) -> list[bytes]:
        window, self._window = self._window, []
        self.windows_out += 1
        return window

    def receive(self, outputs: dict[str, np.ndarray]) -> None:
        """The outputs ``{head: [frames, D]}`` of the next window handed over."""
        for head, values in outputs.items():
            self.outputs[head].append(values)
        self.windows_in += 1

    @property
    def complete(self) -> bool:
        """Every window handed over has its outputs."""
        return self.windows_in == self.windows_out

    def predictions(self, stem: str, fps: float, label_names: dict, stream) -> preds_lib.VideoPredictions:
        """The track's raw per-frame predictions (once every window's outputs are in)."""
        outputs = {h: np.concatenate(parts) for h, parts in self.outputs.items()}
        return preds_lib.VideoPredictions(
            stem=stem, fps=fps, timestamps_us=np.frombuffer(self.timestamps, np.int64).copy(),
            decoded=np.frombuffer(self.decoded, np.uint8).astype(bool),
            has_face=np.frombuffer(self.has_face, np.uint8).astype(bool),
            boxes=np.frombuffer(self.boxes, np.float32).reshape(-1, 4).copy(), outputs=outputs,
            label_names={h: list(label_names.get(h, [])) for h in outputs}, stream=stream)


class WindowBatcher:
    """Windows of any tracks through the model on ``pool``, in batches of ``predictor.batch_size`` windows of one track.

    A batch holds consecutive windows of one track, in the places they have when that track is predicted alone (its
    last batch padded alike): a window's outputs can differ in the last bits with its place in a batch (the CPU's
    matrix kernels treat the rows of a block differently), so this keeps every track's predictions byte for byte the
    same whichever tracks run beside it (``predict --workers``). The model is fed the tracks' batches as they fill.
    One batch runs in the model while the next fills (at most :data:`MAX_BATCHES_IN_FLIGHT` submitted). Each
    window's outputs go back to its track (:meth:`TrackRun.receive`) in the order its windows came.
    """

    def __init__(self, predictor: WindowPredictor, pool: concurrent.futures.Executor):
        self._predictor, self._pool = predictor, pool
        self._waiting: dict[int, tuple[TrackRun, list[list[bytes]]]] = {}  # id(run) -> (run, its windows waiting)
        self._in_flight: collections.deque = collections.deque()

    def add_frame(self, run: TrackRun, frame: FrameCrop) -> None:
        """The next frame of ``run``'s track: the window it completes, if any, waits for its batch."""
        window = run.add(frame)
        if window is not None:
            self.add(run, window)

    def end_track(self, run: TrackRun) -> None:
        """``run``'s track has no more frames: its last window (padded) and its last batch (short, as when the track
        is predicted alone) go to the model."""
        last = run.last_window()
        if last is not None:
            self.add(run, last)
        self.flush(run)

    def add(self, run: TrackRun, window: list[bytes]) -> None:
        windows = self._waiting.setdefault(id(run), (run, []))[1]
        windows.append(window)
        if len(windows) == self._predictor.batch_size:
            self.flush(run)

    def flush(self, run: TrackRun | None = None) -> None:
        """Submits the windows waiting of ``run`` (default: of every track; a short batch is padded)."""
        for key in [id(run)] if run is not None else list(self._waiting):
            if key not in self._waiting:
                continue
            owner, windows = self._waiting.pop(key)
            self._in_flight.append((owner, len(windows), self._pool.submit(self._predictor, windows)))
            while len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
                self._collect()

    def discard(self, run: TrackRun) -> None:
        """Forgets the windows waiting of a track that failed."""
        self._waiting.pop(id(run), None)

    def drain(self) -> None:
        """Submits what waits and collects every output."""
        self.flush()
        while self._in_flight:
            self._collect()

    def _collect(self) -> None:
        run, count, future = self._in_flight.popleft()
        outputs, frames = future.result(), run.seq_len
        # Every window of a batch but a track's last one is full: the outputs split by window in frame order.
        for start in range(0, count * frames, frames):
            run.receive({h: values[start:start + frames] for h, values in outputs.items()})


def predict_video(crops: Iterable[FrameCrop], stem: str, predictor: WindowPredictor, label_names: dict,
                  pool: concurrent.futures.Executor, progress: Progress) -> preds_lib.VideoPredictions:
    """The model's raw per-frame outputs for every frame of one video (no no-face rule, no smoothing).

    Args:
        crops: The video's crops, one per frame index in order (:mod:`trainer.prediction.crops`); its ``fps`` and
            ``stream`` (the video's :class:`beam_jobs.media.video.StreamFacts`) are read once they are consumed.

    Raises:
        beam_jobs.media.video.VideoError: the video cannot be opened or no frame decodes.
    """
    run, batcher = TrackRun(predictor.heads, predictor.seq_len), WindowBatcher(predictor, pool)
    for crop in crops:
        batcher.add_frame(run, crop)
        progress.frame()
    batcher.end_track(run)
    batcher.drain()
    return run.predictions(stem, crops.fps, label_names, crops.stream)
