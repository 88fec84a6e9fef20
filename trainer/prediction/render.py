"""Pictures of a video's predictions: a PNG plot over time and an MP4 with the box, label and a VA trace.

Both take the final per-frame predictions (:class:`trainer.prediction.outputs.VideoPredictions`, after the
no-face rule and smoothing), so they show what the CSV and the ABAW files hold.

Example::

    write_plot("out/clip.png", preds)
    write_video("out/clip.mp4", "videos/clip.mp4", preds)   # decodes the video a second time
"""

from __future__ import annotations

import io
import os
import tempfile

import cv2
import numpy as np

from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL
from tfrecords_schema.atomic import incomplete_file, write_atomically

TRACE_HEIGHT = 90  # Pixels of the valence/arousal panel under the video.
_GREEN, _GREY, _WHITE = (60, 200, 60), (150, 150, 150), (255, 255, 255)
_VALENCE_BGR, _AROUSAL_BGR = (80, 200, 80), (40, 140, 255)
# Points of each curve of the PNG plot, at most: the figure is ~1000 pixels wide, and matplotlib holds ~2 KB a point
# while it draws (a 20-minute video's plot took 57 MB more than a 1-minute one's; an hour's, ~200 MB).
PLOT_POINTS = 2000


def _no_face_runs(has_face: np.ndarray) -> list[tuple[int, int]]:
    """``[(first, last + 1)]`` of the runs of frames without a face."""
    edges = np.diff(np.concatenate([[0], (~has_face).astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _thinned(seconds: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(seconds, values)`` of at most :data:`PLOT_POINTS` points: the means of runs of consecutive frames (each
    point at its run's first frame), so a long video's curves cost what a short one's do."""
    if len(seconds) <= PLOT_POINTS:
        return seconds, values
    starts = np.arange(0, len(seconds), -(-len(seconds) // PLOT_POINTS))
    counts = np.diff(np.append(starts, len(seconds)))
    return seconds[starts], np.add.reduceat(values, starts, axis=0) / counts[:, None]


def write_plot(path: str, preds) -> str:
    """A PNG of the per-frame predictions over time (one panel per head; frames without a face shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = [h for h in (HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, HEAD_ACTION_UNITS) if h in preds.outputs]
    seconds = preds.timestamps_us / 1e6
    fig, axes = plt.subplots(len(heads), 1, figsize=(12, 2.6 * len(heads) + 0.6), sharex=True, squeeze=False)
    for ax, head in zip(axes[:, 0], heads):
        values = preds.outputs[head]
        names = preds.label_names[head]
        if head == HEAD_EXPRESSION:
            times, thinned = _thinned(seconds, values)
            ax.stackplot(times, thinned.T, labels=names, alpha=0.85)
            ax.set_ylim(0, 1)
            ax.set_ylabel("expression p")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        elif head == HEAD_VALENCE_AROUSAL:
            times, thinned = _thinned(seconds, values)
            for column, name in enumerate(names):
                ax.plot(times, thinned[:, column], label=name, linewidth=1.2)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel("valence / arousal")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        else:
            end = seconds[-1] if len(seconds) else 1.0
            ax.imshow(values.T, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                      extent=(0, end, len(names) - 0.5, -0.5))
            ax.set_yticks(range(len(names)), labels=names, fontsize=6)
            ax.set_ylabel("AU p")
        for first, last in _no_face_runs(preds.has_face):
            ax.axvspan(seconds[first], seconds[min(last, len(seconds) - 1)], color="black", alpha=0.35, linewidth=0)
    axes[-1, 0].set_xlabel("seconds (grey: no face)")
    axes[0, 0].set_title(f"{preds.stem}: {preds.num_frames} frames, face in {int(preds.has_face.sum())}")
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(fig)
    return write_atomically(path, buffer.getvalue())


def _trace_panel(preds, width: int) -> np.ndarray | None:
    """The whole video's valence/arousal drawn once, ``[TRACE_HEIGHT, width, 3]`` (None without the head)."""
    if HEAD_VALENCE_AROUSAL not in preds.outputs or preds.num_frames == 0:
        return None
    panel = np.full((TRACE_HEIGHT, width, 3), 30, np.uint8)
    middle = TRACE_HEIGHT // 2
    cv2.line(panel, (0, middle), (width - 1, middle), _GREY, 1)
    xs = np.linspace(0, width - 1, preds.num_frames)
    va = preds.valence_arousal()
    for column, colour in ((0, _VALENCE_BGR), (1, _AROUSAL_BGR)):
        ys = middle - va[:, column] * (middle - 4)
        points = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.polylines(panel, [points], False, colour, 1, cv2.LINE_AA)
    cv2.putText(panel, "valence", (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _VALENCE_BGR, 1, cv2.LINE_AA)
    cv2.putText(panel, "arousal", (4, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _AROUSAL_BGR, 1, cv2.LINE_AA)
    return panel


def _caption(preds, row: int) -> str:
    parts = []
    if HEAD_EXPRESSION in preds.outputs:
        probs = preds.outputs[HEAD_EXPRESSION][row]
        best = int(np.argmax(probs))
        parts.append(f"{preds.label_names[HEAD_EXPRESSION][best]} {probs[best]:.2f}")
    if HEAD_VALENCE_AROUSAL in preds.outputs:
        v, a = preds.valence_arousal()[row]
        parts.append(f"V {v:+.2f} A {a:+.2f}")
    if HEAD_ACTION_UNITS in preds.outputs:
        active = [n for n, on in zip(preds.label_names[HEAD_ACTION_UNITS], preds.action_units()[row]) if on]
        parts.append(" ".join(active[:6]) or "no AU")
    return "  ".join(parts)


def _draw(frame: np.ndarray, preds, row: int, panel: np.ndarray | None) -> np.ndarray:
    h, w = frame.shape[:2]
    box = preds.boxes[row]
    if preds.has_face[row]:
        ymin, xmin, ymax, xmax = box
        cv2.rectangle(frame, (int(xmin * w), int(ymin * h)), (int(xmax * w), int(ymax * h)), _GREEN, 2)
    caption = _caption(preds, row) + ("" if preds.has_face[row] else "  (no face)")
    cv2.rectangle(frame, (0, 0), (w, 22), (0, 0, 0), -1)
    cv2.putText(frame, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _WHITE, 1, cv2.LINE_AA)
    if panel is None:
        return frame
    trace = panel.copy()
    x = round(row * (w - 1) / max(preds.num_frames - 1, 1))
    cv2.line(trace, (x, 0), (x, TRACE_HEIGHT - 1), _WHITE, 1)
    return np.concatenate([frame, trace], axis=0)


def write_video(path: str, video_path: str, preds) -> str:
    """An MP4 (``mp4v``) of the video with the box, the label and a valence/arousal trace; returns ``path``.

    The video is decoded a second time (frame by frame); frames that do not decode are left out.

    Raises:
        OSError: OpenCV cannot open an MP4 writer.
    """
    from beam_jobs.media.video import VideoReader
    from tfrecords_schema import storage

    # A file of a private folder, not mkstemp's: the copy keeps the mode, and mkstemp makes files 0600, unlike every
    # other output (0666 less the umask).
    with tempfile.TemporaryDirectory(prefix="affectstream-render-") as folder:
        local = os.path.join(folder, "render.mp4")
        with VideoReader(video_path) as video:
            panel = _trace_panel(preds, video.width)
            size = (video.width, video.height + (TRACE_HEIGHT if panel is not None else 0))
            writer = cv2.VideoWriter(local, cv2.VideoWriter_fourcc(*"mp4v"), video.fps, size)
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot open an mp4v writer for {local}")
            try:
                for index, _, frame in video.frames(limit=preds.num_frames):
                    writer.write(_draw(frame, preds, index - 1, panel))
            finally:
                writer.release()
        with incomplete_file(path) as tmp:
            storage.gfile(tmp).copy(local, tmp, overwrite=True)
    return path
