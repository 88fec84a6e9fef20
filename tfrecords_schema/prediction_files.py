"""The list of files ``affectstream predict`` wrote into a folder: read by both sides.

``predict`` (and ``score``) keep it in their ``--output`` folder to replace only their own files there
(:mod:`trainer.prediction.ownership`). The conversion reads it too: ``predict --render`` writes videos
(``<stem>.mp4``), and a folder of predictions inside a conversion's ``--videos`` would otherwise give it
rendered copies of the source videos as more videos (:class:`beam_jobs.sources.folder_scan.FolderScan`
leaves them out, with a note).
"""

from __future__ import annotations

import json

LEDGER_FILENAME = ".affectstream-predict-files.json"


def ledger_text(files) -> str:
    """The ledger's content for ``files`` (paths relative to its folder, ``/``-separated)."""
    return json.dumps({"files": sorted(files)}, indent=1) + "\n"


def parse_ledger(text: str) -> set[str] | None:
    """The relative paths a ledger lists; None when ``text`` is not one."""
    try:
        listed = json.loads(text).get("files")
    except (ValueError, AttributeError):
        return None
    return {p for p in listed if isinstance(p, str)} if isinstance(listed, list) else None
