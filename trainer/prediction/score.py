"""``affectstream score``: a folder of ABAW prediction files scored against ABAW annotation files.

``predict --annotations`` scores the predictions of its own run only (files an earlier run left in the folder may be
another model's). A split predicted by several runs into one folder is scored whole here: the two people of a
two-person video (one run with ``--side left``, one with ``--side right``: Aff-Wild2 annotates them as ``<video>_left``
and ``<video>_right``), or videos predicted in batches. Every prediction file of the folder whose name is an annotated
track of the split is scored, with the same figures as ``predict --annotations`` (:func:`scoring.score_predictions`:
over the frames predicted, and ``all_annotated`` as the challenge scores a submission, the tracks without a file
counting as wrong), written to ``PREDICTIONS/scores.json``.

Example::

    affectstream predict --model JOB/export --videos V/single_person --output PRED
    affectstream predict --model JOB/export --videos V/duo.mp4 --side left --output PRED
    affectstream predict --model JOB/export --videos V/duo.mp4 --side right --output PRED
    affectstream score --predictions PRED --annotations ANNOTATIONS
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tfrecords_schema import filesystems, join_path
from tfrecords_schema.cli import add_verbose_flag, command_prog
from trainer.common import errors
from trainer.prediction import ownership, scoring
from trainer.prediction.errors import PredictUsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_prog("trainer.prediction.score"),
                                description="Score every ABAW prediction file of a folder (EXPR/, VA/, AU/ and the "
                                            "CSVs predict writes) against ABAW annotation files; writes "
                                            f"PREDICTIONS/{scoring.SCORES_FILENAME}.")
    p.add_argument("--predictions", required=True, metavar="DIR", help="an `affectstream predict` output folder")
    p.add_argument("--annotations", required=True, metavar="DIR", help="ABAW annotation root (any layout convert reads)")
    p.add_argument("--split", choices=scoring.SCORE_SPLITS, default="validation", help="annotation split scored")
    add_verbose_flag(p)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 with the scores written, 1 when nothing could be scored, 2 on invalid options."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        from trainer.prediction.outputs import PredictionFileError

        filesystems.register_filesystems(args.predictions, args.annotations)
        scores_path = join_path(args.predictions, scoring.SCORES_FILENAME)
        ledger = ownership.Ledger.read(args.predictions, option="--predictions")
        ledger.check([scores_path])  # (A scores.json of the user's is not replaced.)
        scores = scoring.score_predictions(args.predictions, args.annotations, args.split)
        ledger.record([scores_path])
        path = scoring.write_scores(args.predictions, scores)
        ledger.finish([scores_path])
    except PredictUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        return errors.report_failure(e, (PredictionFileError, ValueError, OSError))
    print(f"scores of {scores['videos_scored']} track(s) against {args.annotations} [{args.split}] -> {path}\n"
          f"{scoring.format_scores(scores)}", flush=True)
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(filesystems.exit_hard_if_needed(run()))


if __name__ == "__main__":
    main()
