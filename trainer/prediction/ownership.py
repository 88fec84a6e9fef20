"""Which files of a prediction folder this tool wrote: ``predict`` and ``score`` replace those, and no other file.

An ``--output`` folder may hold the user's own files (the videos' folder, with notes or labels beside the videos; a
folder of earlier work). A file there named as one this run writes (``<stem>.csv``, ``EXPR/<stem>.txt``,
``<stem>.png``, ``scores.json`` ...) is replaced only when an earlier run wrote it: the folder's ledger,
:data:`LEDGER_FILENAME`, lists every file the tool wrote there (over all runs, so that one ``--side left`` run and one
``--side right`` run into one folder both stay replaceable). A folder predicted into before the ledger existed is
read from its ``predict_summary.json``, which names the files of its last run.

Example::

    ledger = Ledger.read(output)
    ledger.check(planned)          # refuses, naming them, files the tool did not write
    ledger.record(planned)         # before the first file is written: a run killed part-way leaves its files owned
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterable

from tfrecords_schema import join_path, storage
from tfrecords_schema.prediction_files import LEDGER_FILENAME, ledger_text, parse_ledger
from trainer.prediction.errors import PredictUsageError

SUMMARY_FILENAME = "predict_summary.json"
_SHOWN = 5


def _relative(output: str, path: str) -> str | None:
    """``path`` relative to ``output`` (``/``-separated), or None when it is not below it."""
    root = output.rstrip("/") + "/"
    return path[len(root):].replace("\\", "/") if path.startswith(root) else None


def _summary_files(text: str) -> set[str]:
    """The files an older run's ``predict_summary.json`` names (relative to its folder), itself included.

    Its paths are joined to that run's ``--output`` as typed, which may differ from this one's (relative, absolute):
    they are taken by their place in the folder instead, the name for files at its top and the head's folder and name
    for ABAW files.
    """
    try:
        summary = json.loads(text)
    except ValueError:
        return set()
    if not isinstance(summary, dict) or not isinstance(summary.get("videos"), list) or "model" not in summary:
        return set()  # (Not a summary of this tool: nothing in the folder is taken as its own.)
    top = [summary.get("scores")]
    abaw: list = []
    for video in summary["videos"]:
        if isinstance(video, dict):
            top += [video.get("csv"), video.get("plot"), video.get("render")]
            abaw += (video.get("abaw") or {}).values()
    owned = {posixpath.basename(p.replace("\\", "/")) for p in top if isinstance(p, str)}
    owned |= {"/".join(p.replace("\\", "/").split("/")[-2:]) for p in abaw if isinstance(p, str)}
    return owned | {SUMMARY_FILENAME}


@dataclasses.dataclass
class Ledger:
    """The files under ``output`` (relative paths) that the tool wrote."""

    output: str
    owned: set[str]

    @classmethod
    def read(cls, output: str) -> Ledger:
        """The ledger of ``output``: empty for a new folder; from ``predict_summary.json`` for one without a ledger."""
        files = storage.gfile(output)
        path = join_path(output, LEDGER_FILENAME)
        if files.exists(path):
            with files.GFile(path, "r") as f:
                listed = parse_ledger(f.read())
            if listed is None:
                raise PredictUsageError(f"{path} is not the file list this tool writes; move it away")
            return cls(output, listed)
        summary = join_path(output, SUMMARY_FILENAME)
        if files.exists(summary):
            with files.GFile(summary, "r") as f:
                return cls(output, _summary_files(f.read()))
        return cls(output, set())

    def check(self, planned: Iterable[str]) -> None:
        """Refuses, before anything is written, to replace a file under ``output`` the tool did not write.

        Args:
            planned: Paths (full, under ``output``) the run writes.

        Raises:
            PredictUsageError: existing files among ``planned`` the ledger does not list (up to five named).
        """
        files = storage.gfile(self.output)
        foreign = [p for p in planned if _relative(self.output, p) not in self.owned and files.exists(p)]
        if foreign:
            shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else "")
            raise PredictUsageError(
                f"--output {self.output} holds {len(foreign)} file(s) this run would replace that this tool did not "
                f"write: {shown}; nothing was read or written: give another --output folder, or move them away")

    def record(self, planned: Iterable[str]) -> None:
        """Adds ``planned`` to the ledger and writes it (atomically), keeping the listed files that still exist."""
        from tfrecords_schema.atomic import write_atomically

        files = storage.gfile(self.output)
        kept = {p for p in self.owned if files.exists(join_path(self.output, *p.split("/")))}
        self.owned = kept | {r for r in (_relative(self.output, p) for p in planned) if r}
        files.makedirs(self.output)
        write_atomically(join_path(self.output, LEDGER_FILENAME), ledger_text(self.owned))


def planned_files(output: str, stems: Iterable[str], submission_dirs: Iterable[str], render: bool,
                  scores: bool) -> list[str]:
    """Every file a run writes under ``output``: per stem the CSV, one ABAW file per head (``submission_dirs``),
    the plot and render with ``render``; then the summary, and ``scores.json`` when the run scores."""
    from trainer.prediction.scoring import SCORES_FILENAME

    planned = []
    for stem in stems:
        planned.append(join_path(output, f"{stem}.csv"))
        planned += [join_path(output, folder, f"{stem}.txt") for folder in submission_dirs]
        if render:
            planned += [join_path(output, f"{stem}.png"), join_path(output, f"{stem}.mp4")]
    planned.append(join_path(output, SUMMARY_FILENAME))
    if scores:
        planned.append(join_path(output, SCORES_FILENAME))
    return planned
