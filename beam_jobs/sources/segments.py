"""A video's rows as segments, laid on its frames: the per-frame labels of the manifest and folder adapters.

A :class:`Segment` is one row's labels on one video: the whole video, or ``[start, end)`` seconds. :func:`build_labels`
lays a video's segments on its frames (:func:`frame_range`: the frames shown in a segment) task by task, and accounts
for every frame a row labels (see :mod:`beam_jobs.sources.media_rows` for how rows become segments).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from beam_jobs.sources import base
from tfrecords_schema import keys

DROP_CONFLICTING_LABELS = "conflicting_labels"  # frames that two rows label differently (in the same task).
DROP_EMPTY_SEGMENT = "empty_segment"  # a segment between two frames: it labels none (0 frames, a note).
_EPSILON = 1e-6  # Seconds × fps rounding slack: a segment starting at 0.3 s at 10 fps starts at frame 4.
# Seconds of slack around a segment's bounds against frame times: millisecond containers round 33.33 ms to 33 ms.
_TIME_SLACK_S = 5e-4


@dataclasses.dataclass(frozen=True)
class Segment:
    """One row's labels on one video: all frames (``start is None``) or ``[start, end)`` seconds.

    Attributes:
        start: Seconds, or None for the whole video.
        end: Seconds (None with ``start``).
        expression: Class index into ``label_names["expression"]``, ``keys.EXPRESSION_INVALID`` if none.
        valence_arousal: ``(valence, arousal)`` or None.
        reason: A DROP_* reason when the row is rejected (its frames count as dropped), else None.
        message: Why it was rejected.
        source: ``"<file>:line N"`` (or the video path for the folder adapter).
    """

    start: float | None
    end: float | None
    expression: int = keys.EXPRESSION_INVALID
    valence_arousal: tuple[float, float] | None = None
    reason: str | None = None
    message: str = ""
    source: str = ""


def frame_range(segment: Segment, fps: float, frames: int | None,
                times_s: np.ndarray | None = None) -> tuple[int, int]:
    """0-based ``[first, stop)`` rows a segment labels: the frames shown in ``[start, end)``.

    Args:
        segment: The segment.
        fps: Frame rate of the video (frame ``i`` at ``(i - 1) / fps`` s when ``times_s`` is None).
        frames: Frame count of the video (segments are cut there), or None when unknown: then
            nothing can be counted and the range is empty.
        times_s: float ``[frames]``: when each frame is shown (presentation times), or None.
    """
    if frames is None:
        return 0, 0
    if segment.start is None:
        return 0, frames
    if times_s is not None:
        first = int(np.searchsorted(times_s[:frames], segment.start - _TIME_SLACK_S, side="left"))
        stop = int(np.searchsorted(times_s[:frames], segment.end - _TIME_SLACK_S, side="left"))
        return first, max(first, stop)
    first = min(frames, max(0, math.ceil(segment.start * fps - _EPSILON)))
    stop = min(frames, math.ceil(segment.end * fps - _EPSILON))
    return first, max(first, stop)


def video_end_s(fps: float, frames: int, times_s: np.ndarray | None = None) -> float:
    """When the last frame stops being shown: its time plus one interval (``frames / fps`` at a constant rate)."""
    if times_s is None or len(times_s) == 0:
        return frames / fps
    last = len(times_s) - 1
    interval = times_s[last] - times_s[last - 1] if last > 0 else 1.0 / fps
    return float(times_s[last] + interval)


def _lay_task(values: np.ndarray, given: np.ndarray, conflict: np.ndarray, value) -> np.ndarray:
    """Lays one row's ``value`` of one task on the frames of views ``values`` (``[F]`` or ``[F, 2]``), ``given`` and
    ``conflict`` (bool ``[F]``), in place: it labels the frames no row labelled yet, and marks as in conflict those
    another row gave a different value. Returns the frames whose conflict this row starts."""
    differ = values != value
    differ = given & (differ.any(axis=1) if differ.ndim > 1 else differ) & ~conflict
    values[~given] = value
    given[:] = True
    conflict |= differ
    return differ


# ---------------------------------------------------------------------------------------- labels


def build_labels(segments: Sequence[Segment], fps: float, frames: int | None, *, where: str = "",
                 unknown_reason: str | None = base.DROP_UNREADABLE_MEDIA, why_unknown: str = "",
                 times_s: np.ndarray | None = None) -> base.TrackLabels:
    """Per-frame labels of a video from its segments.

    Valid segments are laid down in row order, each task on its own: a row's empty cells label nothing, so rows
    that label different tasks of the same frames add up, and a frame loses a task's label where two rows give it
    different values (``conflicting_labels``; the frame is dropped when no label is left). A valid segment that
    holds no frame gets an ``empty_segment`` dead letter (0 frames). Then each rejected segment marks the frames it
    covers that have no valid label with its reason. Every rejected row gets a dead letter with its frame count.

    Args:
        segments: The video's rows.
        fps: Frame rate of the video.
        frames: Frame count of the video; None when it cannot be read (every row counts 0 frames).
        where: The video (for the dead letter when ``frames`` is None).
        unknown_reason: Reason of that dead letter; None: no dead letter (discovery already wrote one).
        why_unknown: Why the frame count is unknown.
        times_s: float ``[frames]``, when each frame is shown; None: ``(i - 1) / fps``.
    """
    ranges = [frame_range(s, fps, frames, times_s) for s in segments]
    end_s = None if frames is None else video_end_s(fps, frames, times_s)
    slack_s = _EPSILON / fps if times_s is None else _TIME_SLACK_S
    n = max([frames or 0] + [stop for _, stop in ranges])
    expression = np.full(n, keys.EXPRESSION_INVALID, dtype=np.int64)
    valence_arousal = np.full((n, 2), keys.VA_INVALID, dtype=np.float32)
    labels = base.TrackLabels(expression, valence_arousal, np.zeros((n, 0), dtype=np.int64),
                              np.full(n, "", dtype=object),
                              open_end=frames is not None and any(s.start is None for s in segments))
    dead = labels.dead_letters
    if frames is None and unknown_reason is not None:  # A dead letter per row, each naming its line.
        dead.extend(base.DeadLetter(segment.source or where, unknown_reason, f"{where}: the row counts 0 frames: the "
                                    f"video's frame count cannot be read ({why_unknown}; {len(segments)} row(s) of it)",
                                    0) for segment in segments)
    # Each task is laid down on its own: a row's empty cell labels nothing, so rows that label different tasks of
    # the same frames complement each other; a frame loses a task's label where two rows give it different values.
    expression_set, va_set = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    expression_conflict, va_conflict = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    conflicts = []  # (row, frames whose label it contradicts first, tasks)
    for segment, (first, stop) in zip(segments, ranges):
        if segment.reason is not None:
            continue
        beyond = end_s is not None and segment.end is not None and segment.end > end_s + slack_s
        if beyond:
            shown = f"{frames} frames at {fps:g} fps" if times_s is None else f"{frames} frames shown until {end_s:g} s"
            dead.append(base.DeadLetter(
                segment.source, base.DROP_BEYOND_VIDEO_END,
                f"segment {segment.start:g}-{segment.end:g} s ends after the video ({shown});"
                " the time past the end labels no frame", 0))
        elif frames is not None and segment.start is not None and stop == first:
            dead.append(base.DeadLetter(
                segment.source, DROP_EMPTY_SEGMENT,
                f"segment {segment.start:g}-{segment.end:g} s holds no frame of the video (none is shown between its"
                " bounds); the row labels nothing", 0))
        span = slice(first, stop)
        new = np.zeros(stop - first, dtype=bool)
        tasks = []
        for task, values, given, conflict, value in (
                ("expression", expression, expression_set, expression_conflict,
                 None if segment.expression == keys.EXPRESSION_INVALID else segment.expression),
                ("valence/arousal", valence_arousal, va_set, va_conflict,
                 None if segment.valence_arousal is None else np.asarray(segment.valence_arousal, np.float32))):
            if value is None:  # An empty cell labels nothing.
                continue
            differ = _lay_task(values[span], given[span], conflict[span], value)
            new |= differ
            tasks += [task] if differ.any() else []
        if new.any():
            conflicts.append((segment, np.flatnonzero(new) + first, tasks))
    expression[expression_conflict] = keys.EXPRESSION_INVALID
    valence_arousal[va_conflict] = keys.VA_INVALID
    lost = (expression_conflict | va_conflict) & ~labels.valid  # Frames left with no label at all.
    labels.rejected[lost] = DROP_CONFLICTING_LABELS
    counted = np.zeros(n, dtype=bool)  # A dropped frame is counted once: by the first row whose conflict it had.
    for segment, where_new, tasks in conflicts:
        mine = where_new[lost[where_new] & ~counted[where_new]]
        counted[mine] = True
        dropped = len(mine)
        dead.append(base.DeadLetter(
            segment.source, DROP_CONFLICTING_LABELS,
            f"this row labels {len(where_new)} frame(s) another row of the same video labels differently "
            f"({' and '.join(tasks)}); those labels are dropped, and {dropped} of the frames are left with no label",
            dropped))
    valid = labels.valid
    for segment, (first, stop) in zip(segments, ranges):
        if segment.reason is None:
            continue
        take = ~valid[first:stop] & (labels.rejected[first:stop] == "")
        labels.rejected[first:stop][take] = segment.reason
        dead.append(base.DeadLetter(segment.source, segment.reason, segment.message, int(take.sum())))
    return labels
