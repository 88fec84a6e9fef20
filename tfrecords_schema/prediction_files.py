"""The list of files ``affectstream predict`` wrote into a folder: read by both sides.

``predict`` (and ``score``) keep it in their ``--output`` folder to replace only their own files there
(:mod:`trainer.prediction.ownership`). The conversion reads it too: ``predict --render`` writes videos
(``<stem>.mp4``), and a folder of predictions inside a conversion's ``--videos`` would otherwise give it
rendered copies of the source videos as more videos (:class:`beam_jobs.sources.folder_scan.FolderScan`
leaves them out, with a note).

The file is JSON: ``{"files": {relative path: [size, mtime_ns] or null}}``, paths ``/``-separated; the size and
modification time a local file had when the tool finished writing it (null: not known, for an object store's files
or a run that did not finish).
"""

from __future__ import annotations

import json
import os

LEDGER_FILENAME = ".affectstream-predict-files.json"


def ledger_text(files) -> str:
    """The ledger's content for ``files``: ``{relative path: [size, mtime_ns] or None}``, or relative paths alone."""
    files = files if isinstance(files, dict) else dict.fromkeys(files)
    return json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n"


def parse_ledger(text: str) -> dict[str, list | None] | None:
    """``{relative path: [size, mtime_ns] or None}`` of a ledger; None when ``text`` is not one."""
    try:
        listed = json.loads(text).get("files")
    except (ValueError, AttributeError):
        return None
    if isinstance(listed, list):  # (The first form: names only.)
        listed = dict.fromkeys(listed)
    if not isinstance(listed, dict):
        return None
    return {p: (v if isinstance(v, list) and len(v) == 2 else None) for p, v in listed.items() if isinstance(p, str)}


def written_identity(path: str) -> list | None:
    """``[size, mtime_ns]`` of a local file (what tells the tool's file from one put there since under its name); None
    for an object store's (one request each, for every file of a run: names only there) or a file that is not there."""
    from tfrecords_schema import storage

    if storage.is_url(path):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def as_written(known: list | None, path: str) -> bool:
    """Whether the file at ``path`` is the one the ledger lists as ``known`` (its entry): no size and time recorded,
    or the same ones. A file changed since is not the tool's: one of the user's put there under its name."""
    return known is None or known == written_identity(path)


def rendered_videos(folder: str, names, video_extensions: tuple[str, ...]) -> tuple[list[str], str | None]:
    """``(renders, note)``: the names among ``names`` (files of ``folder``) that are videos ``predict --render`` wrote
    there (the folder's ledger lists them, unchanged since: :func:`as_written`; ``video_extensions`` lower case), and
    a note saying they are left out (None when there are none). Rendered copies of source videos would otherwise be
    taken for more videos, by the conversion's folder scan and by ``predict``'s. A ledger that cannot be read lists
    none: the videos are there to be seen."""
    from tfrecords_schema import join_path, storage
    from tfrecords_schema.cli import first_of

    path = join_path(folder, LEDGER_FILENAME)
    errors: tuple = (OSError,)
    if storage.is_url(path):
        import tensorflow as tf  # (Only a URL is read through TensorFlow.)

        errors += (tf.errors.OpError,)
    try:
        with storage.gfile(path).GFile(path, "rb") as f:
            written = parse_ledger(f.read().decode("utf-8", "replace")) or {}
    except errors:
        written = {}
    renders = sorted(name for name in names if name in written and name.lower().endswith(video_extensions)
                     and as_written(written[name], join_path(folder, name)))
    note = (f"{len(renders)} video(s) in {folder} that affectstream predict --render wrote left out (its "
            f"{LEDGER_FILENAME} lists them): {first_of(renders, 3)}") if renders else None
    return renders, note
