"""The conversion's ``--output``: whose it is, who may write it, and how a run replaces it safely.

* :func:`check_output`: an existing, non-empty ``--output`` is replaced only with ``--overwrite`` and only when
  this tool wrote it: its ``dataset_info.json`` is an AffectStream one (``schema_version`` and the schema's
  fields) and every entry in it is a name the conversion writes (:func:`foreign_entries`). Nothing is deleted
  here; a refusal names the foreign entries.
* :func:`claim_output`: the whole run, locally. Before any work it checks where the output will be built
  (:func:`tfrecords_schema.disk_space.check_output_place`: writable, the previous entries on the output's own file
  system, free space against twice the previous output) and refuses in one line when the run could not finish
  there. It then takes the output's lock (inside it: :func:`tfrecords_schema.locks.lock_output`; a second run
  refuses, naming the holder; a dead holder's lock is taken over), repairs what a killed run left
  (:func:`tfrecords_schema.transaction.remove_leftovers`) and yields a staging folder inside the output
  (:func:`tfrecords_schema.transaction.output_transaction`), so ``--output`` may be a mount point or sit on another
  file system than its parent. The new output replaces the previous one entry by entry only after the block
  succeeds, and only if the output still holds nothing this tool did not write: entries that appeared during the
  run keep both outputs side by side (:class:`tfrecords_schema.transaction.SwapRefused`, exit status 2). A
  failure, a typo found late or a kill leaves the previous output as it was. A full disk becomes one
  :class:`DiskFullError` line with the free space of the output's file system and an estimate of the space needed.
* Object-store outputs (``gs://``, ``s3://``) are written in place: the lock and the transaction go through
  ``tf.io.gfile``, which knows neither Beam's storage options (``--s3_endpoint_url``, ...) nor, without
  tensorflow-io, ``s3://``. There the previous output is deleted only after the inputs have been listed
  (:meth:`OutputClaim.clear_previous`), and the run's temp folder is removed on failure.

Layout a conversion writes (everything else is foreign)::

    OUT/dataset_info.json               OUT/errors/dead_letters.jsonl
    OUT/<split>/<shard name>            OUT/.tmp-convert/{spill/*.bin, progress/*.json, <split>/<shard name>,
    temporary names (.NAME.incomplete-<id>) of the files above     dataset_info.json}  (a run's temp folder)
    while a run holds it: OUT/.affectstream.lock and the transaction's marked folders (.OUT.incomplete-<id>/, ...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator

from beam_jobs.pipeline.config import PROGRESS_DIRNAME, TMP_DIRNAME

# Names the conversion writes under its output, imported from where their writers declare them.
from beam_jobs.pipeline.files import literal_pattern
from beam_jobs.pipeline.finalize import DEAD_LETTERS_FILENAME, ERRORS_DIRNAME
from beam_jobs.pipeline.spill import SPILL_DIRNAME
from tfrecords_schema import DATASET_INFO_FILENAME, DatasetInfo, DatasetInfoError, join_path
from tfrecords_schema.atomic import INCOMPLETE_MARK
from tfrecords_schema.dataset_info import parse_shard_basename
from tfrecords_schema.disk_space import (
    DiskFullError,
    OutputPlace,
    check_output_place,
    describe_disk_full,
    format_size,
    is_disk_full,
)
from tfrecords_schema.locks import LOCK_FILENAME, lock_output
from tfrecords_schema.storage import is_url as _is_url
from tfrecords_schema.transaction import (
    MARKER_FILENAME,
    describe_foreign,
    find_leftovers,
    output_entries,
    output_transaction,
    own_entries,
    remove_leftovers,
)

_MAX_LISTED = 8  # Foreign entries named in a refusal.
_SPILL_FILE = re.compile(r"^[0-9a-f]{32}\.bin$")
_MARKER_FILE = re.compile(r"^[0-9a-f]{40}\.json$")


class OutputRefused(ValueError):
    """``--output`` may not be written or replaced (exit status 2): the message says why."""


def _is_temp_of(name: str, real: str) -> bool:
    """``.REAL.incomplete-<id>``: the temporary name :mod:`tfrecords_schema.atomic` gives ``real``."""
    return name.startswith(f".{real}{INCOMPLETE_MARK}")


def _list_files(output: str) -> tuple[list[str], list[str]]:
    """(files, odd entries) under ``output``, as paths relative to it with ``/``.

    Odd entries are what a conversion never writes whatever its name: symbolic links, empty folders
    and other non-files (a folder ``x`` is listed as ``x/``).
    """
    if _is_url(output):
        from apache_beam.io.filesystems import FileSystems

        root = output.rstrip("/") + "/"
        found = FileSystems.match([literal_pattern(root) + "**"])[0].metadata_list
        return sorted(m.path[len(root):] for m in found if m.path.startswith(root) and m.path != root), []
    files, odd = [], []
    own = set(own_entries(output))  # The lock and a running transaction's marked folders: not the output.
    for folder, dirs, names in os.walk(output):
        rel_dir = os.path.relpath(folder, output).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        if not prefix:
            dirs[:] = [d for d in dirs if d not in own]
            names = [n for n in names if n not in own]
        for d in list(dirs):
            if os.path.islink(os.path.join(folder, d)):
                odd.append(prefix + d)
                dirs.remove(d)  # Never followed: what it points to is not ours to judge or delete.
        if not names and not dirs and prefix:
            odd.append(prefix)
        for name in names:
            path = os.path.join(folder, name)
            (odd if os.path.islink(path) or not os.path.isfile(path) else files).append(prefix + name)
    return sorted(files), sorted(odd)


def _is_shard_of(split: str, name: str) -> bool:
    try:
        return parse_shard_basename(name).split == split
    except ValueError:
        return False


def _tmp_names(parts: list[str]) -> bool:
    """A file under ``.tmp-convert/`` that a run writes there (spill, progress markers, temp shards, info)."""
    if len(parts) == 1:
        return parts[0] == DATASET_INFO_FILENAME or _is_temp_of(parts[0], DATASET_INFO_FILENAME)
    if len(parts) != 2:
        return False
    folder, name = parts
    if folder == SPILL_DIRNAME:
        return bool(_SPILL_FILE.match(name))
    if folder == PROGRESS_DIRNAME:
        return bool(_MARKER_FILE.match(name))
    return _is_shard_of(folder, name)


def _written_by_conversion(rel: str) -> bool:
    """Whether the file ``rel`` (relative to an output, ``/``-separated) has a name the conversion writes."""
    parts = rel.split("/")
    top = parts[0]
    if len(parts) == 1:
        return top in (DATASET_INFO_FILENAME, MARKER_FILENAME, LOCK_FILENAME) or _is_temp_of(top, DATASET_INFO_FILENAME)
    if top == TMP_DIRNAME:
        return _tmp_names(parts[1:])
    if len(parts) != 2:
        return False
    if top == ERRORS_DIRNAME:
        return parts[1] == DEAD_LETTERS_FILENAME or _is_temp_of(parts[1], DEAD_LETTERS_FILENAME)
    return _is_shard_of(top, parts[1])


def foreign_entries(output: str) -> list[str]:
    """Entries under ``output`` that a conversion does not write (relative paths; empty: all could be ours)."""
    files, odd = _list_files(output)
    return sorted(odd + [f for f in files if not _written_by_conversion(f)])


def _read_text(path: str) -> str | None:
    if _is_url(path):
        from apache_beam.io.filesystems import FileSystems

        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as f:
            return f.read().decode("utf-8", errors="replace")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def ownership_problem(output: str) -> str | None:
    """None when ``output`` holds an AffectStream conversion output and nothing else; else the reason."""
    text = _read_text(join_path(output, DATASET_INFO_FILENAME))
    if text is None and not (_is_url(output) and _unfinished_in_place(output)):
        return f"it has no {DATASET_INFO_FILENAME}"
    if text is not None:
        try:
            DatasetInfo.from_json(text, source=join_path(output, DATASET_INFO_FILENAME))
        except DatasetInfoError as e:
            if not _is_affectstream_info(text):
                return f"its {DATASET_INFO_FILENAME} is not one this tool writes ({str(e)[:200]})"
    return _foreign_problem(output)


def _unfinished_in_place(output: str) -> bool:
    """An object-store output holding what a killed in-place run wrote (``.tmp-convert/``, no info yet).

    Only there: a local run stages in a marked folder, so a local folder without the info is refused without
    walking it (``--overwrite`` given ``/data`` for ``/data/records`` listed every file below first: minutes on a
    share, for a refusal).
    """
    files, _ = _list_files(output)
    return any(f.startswith(TMP_DIRNAME + "/") for f in files)


def _foreign_problem(output: str) -> str | None:
    """``it holds 2 entries this tool did not write: a, b`` (None: there is none)."""
    return describe_foreign(foreign_entries(output), shown=_MAX_LISTED)


def _swap_problem(output: str) -> str | None:
    """Right before the swap: the entries that appeared in ``output`` during the run and are not this tool's."""
    return _foreign_problem(output) or ownership_problem(output)


def _is_affectstream_info(text: str) -> bool:
    """A dataset_info.json of another AffectStream version: an integer schema_version and the schema's fields."""
    try:
        raw = json.loads(text)
    except ValueError:
        return False
    required = {f.name for f in dataclasses.fields(DatasetInfo) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    return (isinstance(raw, dict) and isinstance(raw.get("schema_version"), int) and required <= set(raw)
            and isinstance(raw.get("splits"), dict))


def _entries(output: str) -> list[str]:
    if _is_url(output):
        files, _ = _list_files(output)
        return files
    if os.path.lexists(output) and not os.path.isdir(output):
        raise OutputRefused(f"output {output} exists and is not a folder")
    return output_entries(output)


def check_output(output: str, overwrite: bool) -> bool:
    """Whether ``output`` holds a previous output that this run will replace; nothing is written or deleted.

    A local output holding a killed run's leftovers is checked only once they are repaired (:func:`claim_output`,
    under the lock): until then this says whether it holds entries.

    Raises:
        OutputRefused: ``output`` is a file, is not empty and ``overwrite`` is off, or is not this tool's.
    """
    entries = _entries(output)
    if not entries:
        return False
    if not _is_url(output) and any(not item.alive for item in find_leftovers(output)):
        # A killed run's leftovers are repaired under the run's lock before the output is checked again: checked
        # before that, a kill in the swap (the previous dataset_info.json already in the backup) read as a folder of
        # another tool, and the next run refused to finish the swap.
        return bool(output_entries(output))
    if not overwrite:
        left = [e for e in entries if e.startswith(TMP_DIRNAME + "/")]
        if _is_url(output) and left and ownership_problem(output) is None:  # (An object-store run writes in place.)
            raise OutputRefused(f"output {output} holds what a stopped conversion left ({len(left)} object(s) under "
                                f"{TMP_DIRNAME}/); pass --overwrite to replace it")
        raise OutputRefused(f"output {output} already exists and is not empty; pass --overwrite to replace it")
    problem = ownership_problem(output)
    if problem:
        raise OutputRefused(f"--overwrite refused: {output} does not look like a conversion output of this tool: "
                            f"{problem}. Nothing was deleted; move those entries away or choose another --output")
    return True


def _tree_bytes(folder: str) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def estimate_needed_bytes(staging: str, total_tracks: int) -> int | None:
    """Space a run needs, from what it wrote before the disk filled (None: too early to tell).

    Spill files grow with the tracks done (their progress markers); the shards then copy the spill, so the
    run needs about twice the whole spill: ``2 x spill / fraction of tracks done``.
    """
    tmp = os.path.join(staging, TMP_DIRNAME)
    spill = _tree_bytes(os.path.join(tmp, SPILL_DIRNAME))
    progress = os.path.join(tmp, PROGRESS_DIRNAME)
    done = len(os.listdir(progress)) if os.path.isdir(progress) else 0
    if spill == 0 or done == 0 or total_tracks <= 0:
        return None
    return int(2 * spill * total_tracks / min(done, total_tracks))


@dataclasses.dataclass
class OutputClaim:
    """A run's hold on ``--output``: where to write, and whether a previous output is replaced.

    Attributes:
        output: The user's ``--output``.
        staging: Where the run writes (a staging folder inside ``output``; ``output`` itself on object stores).
        replacing: A previous output is there and is replaced on success.
        total_tracks: Set once the tracks are known: the disk-full estimate scales by the tracks done.
        place: Locally, what the check before any work found (file system, free space, estimate).
    """

    output: str
    staging: str
    replacing: bool
    total_tracks: int = 0
    place: OutputPlace | None = None

    @property
    def in_place(self) -> bool:
        return self.staging == self.output

    def clear_previous(self) -> None:
        """In place only (object stores): deletes the previous output, checked again as this tool's, first."""
        if not (self.in_place and self.replacing):
            return
        from beam_jobs.pipeline.files import delete_tree

        problem = ownership_problem(self.output)
        if problem:
            raise OutputRefused(f"--overwrite refused: {self.output} changed during the run: {problem}")
        delete_tree(self.output)
        self.replacing = False  # Gone: nothing previous is left to keep.


def check_place(output: str, replacing: bool) -> OutputPlace:
    """Where a local run will build ``output``, checked before any work (nothing is written).

    The estimate is twice the previous output (spill files, then shards, while the previous output stays until
    the swap); without a previous output it is unknown.

    Raises:
        OutputRefused: not writable, or an entry the swap must move is on another file system.
    """
    entries = output_entries(output)
    needed = 2 * _tree_bytes(output) if replacing else None
    place = check_output_place(output, moved=entries, needed_bytes=needed)
    if place.problem:
        raise OutputRefused(f"--output {output} cannot be written: {place.problem}; nothing was written")
    return place


@contextlib.contextmanager
def claim_output(output: str, overwrite: bool, command: str | None = None,
                 log: Callable[[str], None] = print) -> Iterator[OutputClaim]:
    """Holds ``output`` for one run: checks, lock, leftovers of killed runs, transaction (see the module docstring).

    Raises:
        tfrecords_schema.locks.LockHeldError: another run holds the output.
        OutputRefused: the output may not be written or replaced (also one restored from a killed run's swap).
        tfrecords_schema.transaction.SwapRefused: the output changed during the run; both outputs are kept.
        tfrecords_schema.transaction.TransactionError: the swap could not be made.
        DiskFullError: the disk filled up; the staging folder is already removed.
    """
    if _is_url(output):
        yield from _claim_in_place(output, overwrite)
        return
    if os.path.islink(output):  # Build in the real folder (its file system), so the link sees the new output.
        output = os.path.realpath(output)
    place = check_place(output, check_output(output, overwrite))
    if place.short_of_space:
        log(f"convert: warning: {output}: only {format_size(place.free_bytes)} free on its file system, about "
            f"{format_size(place.needed_bytes)} needed (twice the previous output): the run may stop with a full disk")
    created = not os.path.isdir(output)
    try:
        with lock_output(output, command) as lock:
            for message in lock.messages:
                log(f"convert: warning: {message}")
            for done in remove_leftovers(output):
                log(f"convert: warning: leftover of an earlier run: {done}")
            replacing = check_output(output, overwrite)  # Again, under the lock: a leftover may have restored it.
            yield from _transaction(output, overwrite, command, OutputClaim(output, "", replacing, place=place))
    finally:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(output)  # Only when empty: a failed first run leaves no folder behind.


def _transaction(output: str, overwrite: bool, command: str | None, claim: OutputClaim) -> Iterator[OutputClaim]:
    needed = None
    try:
        with output_transaction(output, replace=overwrite, command=command, check_swap=_swap_problem) as staging:
            claim.staging = staging
            try:
                yield claim
            except BaseException as e:
                if is_disk_full(e):  # Measured now: the transaction removes the staging folder next.
                    needed = estimate_needed_bytes(staging, claim.total_tracks)
                raise
    except DiskFullError as e:  # Raised once the staging folder is gone: the free space it gives is real.
        raise DiskFullError(describe_disk_full(output, needed)) from e


def _claim_in_place(output: str, overwrite: bool) -> Iterator[OutputClaim]:
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs.pipeline.files import delete_tree

    claim = OutputClaim(output, output, check_output(output, overwrite))
    tmp = join_path(output, TMP_DIRNAME)
    try:
        yield claim
    except BaseException as e:
        with contextlib.suppress(Exception):  # Best effort: the error being raised matters more.
            if FileSystems.match([literal_pattern(tmp.rstrip("/")) + "/**"])[0].metadata_list:
                delete_tree(tmp)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(describe_disk_full(output)) from e
        raise
