"""What a score covers: the labelled frames of a split, the frames scored, and why the others were not.

A macro-F1 over the frames that reached the records says nothing of a video the conversion could not read: its
frames simply vanish from the figure. :func:`split_coverage` puts every labelled frame of the annotations next to the
frames an evaluation scored, and breaks the difference down by reason, from the conversion's accounting
(``dataset_info.json``): ``labelled_frames == scored_frames + sum(not_scored)`` always holds.

* the accounting's drop reasons (``no_media``, ``decode_error``, ``beyond_video_end``, ``unreadable_media``,
  ``malformed_line``, ...): labelled frames the conversion could not write;
* ``not_for_this_model``: frames written with labels for no head of the model (a VA-only frame under an expression
  model);
* ``skipped_as_corrupt``: frames written in records that the evaluation skipped as corrupt (``--skip_corrupt``): the
  written labelled frames it did not read;
* ``invalid_label``: the same shortfall when no record was skipped: frames the conversion counted as labelled whose
  labels the trainer does not take as valid (out of range for the label names: records or ``dataset_info.json``
  edited since, or written by another tool).

``coverage`` is ``scored_frames / labelled_frames``. Provided crops that do not decode are written without a face
and scored (the ``unreadable_crop`` dead letters count them).
"""

from __future__ import annotations

NOT_FOR_THIS_MODEL = "not_for_this_model"
SKIPPED_AS_CORRUPT = "skipped_as_corrupt"
INVALID_LABEL = "invalid_label"


def split_coverage(info, split: str, scored_frames: int, labelled_read: int | None = None,
                   skipped_records: int = 0) -> dict:
    """``{"labelled_frames", "scored_frames", "not_scored": {reason: frames}, "coverage"}`` of one split.

    Args:
        info: The data's :class:`tfrecords_schema.DatasetInfo` (its accounting of ``split``).
        split: The evaluated split.
        scored_frames: Frames the evaluation scored with at least one head.
        labelled_read: Labelled frames the evaluation read, scored or not
            (:attr:`trainer.evaluation.metrics.PredictionAccumulator.labelled_frames_read`); None: every written one.
        skipped_records: Records the evaluation skipped as corrupt: the written labelled frames it did not read are
            theirs, else (none skipped) their labels are not valid.
    """
    accounting = info.splits[split].accounting
    not_scored = {reason: frames for reason, frames in sorted(accounting.dropped.items()) if frames}
    written = accounting.written_frames
    # Written but not read: lost with skipped records. (Never below 0, so the identity above holds even if the
    # records counted a frame as labelled that the conversion did not.)
    lost = max(0, written - labelled_read) if labelled_read is not None else 0
    unscored_read = written - lost - scored_frames
    if unscored_read:
        not_scored[NOT_FOR_THIS_MODEL] = unscored_read
    if lost:
        not_scored[SKIPPED_AS_CORRUPT if skipped_records else INVALID_LABEL] = lost
    return coverage_block(accounting.labelled_frames, scored_frames, not_scored)


def coverage_block(labelled: int, scored: int, not_scored: dict[str, int]) -> dict:
    """The coverage block of metrics.json and scores.json (see the module docstring)."""
    return {"labelled_frames": int(labelled), "scored_frames": int(scored),
            "not_scored": {k: int(v) for k, v in not_scored.items()},
            "coverage": round(scored / labelled, 6) if labelled else 0.0}


def format_coverage(block: dict, split: str) -> str:
    """One line: ``split: N of M labelled frames scored (coverage); not scored: reason n, ...``."""
    line = (f"{split}: {block['scored_frames']} of {block['labelled_frames']} labelled frames scored "
            f"(coverage {block['coverage']:.4f})")
    if block["not_scored"]:
        line += "; not scored: " + ", ".join(f"{reason} {n}" for reason, n in block["not_scored"].items())
    return line
