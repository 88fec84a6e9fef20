"""Which files of a prediction folder this tool wrote: ``predict`` and ``score`` replace those, and no other file.

An ``--output`` folder may hold the user's own files (the videos' folder, with notes or labels beside the videos; a
folder of earlier work). A file there named as one this run writes (``<stem>.csv``, ``EXPR/<stem>.txt``,
``<stem>.png``, ``scores.json`` ...) is replaced only when an earlier run wrote it: the folder's ledger,
:data:`LEDGER_FILENAME`, lists every file the tool wrote there (over all runs, so that one ``--side left`` run and one
``--side right`` run into one folder both stay replaceable). A folder predicted into before the ledger existed is
read from its ``predict_summary.json``, which names the files of its last run. A local file is the tool's only while
it has the size and modification time it had when the run ended: a file put there since under a listed name (after
``rm OUT/*``, or where a video failed and wrote nothing) is the user's. Two runs into one folder at once each merge
their entries into the list as it is on disk when they write it.

Example::

    ledger = Ledger.read(output)
    ledger.check(planned)          # refuses, naming them, files the tool did not write
    ledger.record(planned)         # before the first file is written: a run killed part-way leaves its files owned
    ...                            # the run writes its files
    ledger.finish(planned)         # each file written listed with its size and time; those not written leave it
                                   # (also when the run stops part-way: Ctrl-C, an error)
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections.abc import Iterable

from tfrecords_schema import join_path, storage
from tfrecords_schema.cli import first_of
from tfrecords_schema.prediction_files import LEDGER_FILENAME, as_written, ledger_text, parse_ledger, written_identity
from trainer.prediction.errors import PredictUsageError

SUMMARY_FILENAME = "predict_summary.json"
_SHOWN = 5


def _relative(output: str, path: str) -> str | None:
    """``path`` relative to ``output`` (``/``-separated, no empty parts: ``out//a.csv`` is ``a.csv``), or None when it
    is not below it."""
    root = output.rstrip("/") + "/"
    if not path.startswith(root):
        return None
    return "/".join(p for p in path[len(root):].replace("\\", "/").split("/") if p not in ("", ".")) or None


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
    """The files under ``output`` that the tool wrote: ``{relative path: [size, mtime_ns] or None}`` (None: identity not
    known: an object store's file, a file of a run that did not finish, or a folder of an older version).

    Args:
        output: The folder.
        owned: Its files the tool wrote.
        option: The command's name for the folder, for messages (``--output``, ``--predictions``).
        legacy: Read from an older version's ``predict_summary.json``, which names only its last run's files.
    """

    output: str
    owned: dict[str, list | None]
    option: str = "--output"
    legacy: bool = False

    @classmethod
    def read(cls, output: str, option: str = "--output") -> Ledger:
        """The ledger of ``output``: empty for a new folder; from ``predict_summary.json`` for one without a ledger."""
        listed = _read_listed(output)
        if listed is not None:
            return cls(output, listed, option)
        files = storage.gfile(output)
        summary = join_path(output, SUMMARY_FILENAME)
        if files.exists(summary):
            with files.GFile(summary, "r") as f:
                return cls(output, dict.fromkeys(_summary_files(f.read())), option, legacy=True)
        return cls(output, {}, option)

    def _owns(self, rel: str, path: str) -> bool:
        if rel not in self.owned:
            return False
        return as_written(self.owned[rel], path)  # (Changed since: a file of the user's under the name.)

    def check(self, planned: Iterable[str]) -> None:
        """Refuses, before anything is written, to replace a file under ``output`` the tool did not write.

        Args:
            planned: Paths (full, under ``output``) the run writes.

        Raises:
            PredictUsageError: existing files among ``planned`` the ledger does not list, or that changed since the
                tool wrote them (up to five named); a local file where the run writes a folder (``OUT/EXPR``).
        """
        planned = list(planned)
        blocked = _files_in_the_way(self.output, planned)
        if blocked:  # (Before, each video was predicted and then failed to be written: "File exists".)
            raise PredictUsageError(f"{self.option} {self.output} holds {len(blocked)} file(s) where this run writes a "
                                    f"folder: {first_of(blocked, _SHOWN)}; nothing was read or written: give another "
                                    f"{self.option} folder, or move them away")
        existing = _existing(self.output, planned)
        foreign = [p for p in planned if p in existing and not self._owns(_relative(self.output, p) or "", p)]
        if not foreign:
            return
        shown = first_of(foreign, _SHOWN)
        why = ("this tool did not record writing (a folder predicted into by an older version records only its last "
               "run's files: if these are the tool's, delete them)" if self.legacy
               else "this tool did not write, or that changed since it wrote them")
        raise PredictUsageError(f"{self.option} {self.output} holds {len(foreign)} file(s) this run would replace "
                                f"that {why}: {shown}; nothing was read or written: give another {self.option} "
                                "folder, or move them away")

    def record(self, planned: Iterable[str]) -> None:
        """Before the first file is written: adds ``planned`` (identity not known yet), so that a run killed part-way
        leaves its files the tool's; listed files that are gone leave the list."""
        self._write({rel: None for rel in (_relative(self.output, p) for p in planned) if rel}, written=False)

    def finish(self, planned: Iterable[str]) -> None:
        """After the run: ``planned`` files that were written are listed with their identity, the others leave the
        list (a video that failed wrote none: a file put there later under its name is the user's)."""
        self._write({rel: written_identity(p) for p, rel in ((p, _relative(self.output, p)) for p in planned) if rel},
                    written=True)

    def _write(self, entries: dict, written: bool) -> None:
        """Merges ``entries`` into the list on disk (read again now: another run into the folder may have added its
        own since) and writes it atomically; files that are not there leave it, ``entries`` too when ``written``
        (after the run: what it did not write), else those stay (before the run: not written yet)."""
        from tfrecords_schema.atomic import write_atomically

        merged = {**self.owned, **(_read_listed(self.output) or {}), **entries}
        paths = {rel: join_path(self.output, *rel.split("/")) for rel in merged}
        existing = _existing(self.output, paths.values())  # (One listing of each folder.)
        self.owned = {rel: v for rel, v in merged.items()
                      if paths[rel] in existing or (rel in entries and not written)}
        storage.gfile(self.output).makedirs(self.output)
        write_atomically(join_path(self.output, LEDGER_FILENAME), ledger_text(self.owned))


def _read_listed(output: str) -> dict[str, list | None] | None:
    """The ledger on disk, or None without one.

    Raises:
        PredictUsageError: a file of the ledger's name that is not one.
    """
    files = storage.gfile(output)
    path = join_path(output, LEDGER_FILENAME)
    if not files.exists(path):
        return None
    with files.GFile(path, "rb") as f:
        text = f.read()
    listed = parse_ledger(text.decode("utf-8", "replace"))
    if listed is None:
        raise PredictUsageError(f"{path} is not the file list this tool writes; move it away")
    return listed


def _files_in_the_way(output: str, paths: Iterable[str]) -> list[str]:
    """The folders of ``paths`` below local folder ``output`` (``OUT/EXPR``) that are there as something else than a
    folder (an object store has no such clash: an object and a prefix may share a name)."""
    if storage.is_url(output):
        return []
    folders = set()
    for path in paths:
        parts = (_relative(output, path) or "").split("/")[:-1]
        folders |= {join_path(output, *parts[:i + 1]) for i in range(len(parts))}
    return sorted(f for f in folders if os.path.lexists(f) and not os.path.isdir(f))


def _existing(output: str, paths: Iterable[str]) -> set[str]:
    """Which of ``paths`` (under ``output``) exist: each folder they are in listed once (one request on an object store,
    not one per file)."""
    files = storage.gfile(output)
    by_folder: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        rel = _relative(output, path)
        if rel:
            folder, _, name = rel.rpartition("/")
            by_folder.setdefault(folder, []).append((name, path))
    found = set()
    for folder, members in by_folder.items():
        where = join_path(output, *folder.split("/")) if folder else output
        try:
            names = {n.rstrip("/") for n in files.listdir(where)} if files.isdir(where) else set()
        except OSError:
            names = set()
        found |= {path for name, path in members if name in names}
    return found


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
