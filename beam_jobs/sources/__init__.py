"""Dataset adapters: one module per layout, registered by name for ``--dataset``.

Example::

    from beam_jobs.sources import make_source

    source = make_source("abaw", annotations="data/annotations", videos="data/videos")
    discovery = source.discover()
"""

from __future__ import annotations

from beam_jobs.sources.abaw import AbawSource
from beam_jobs.sources.base import DatasetSource
from beam_jobs.sources.folders import FoldersSource
from beam_jobs.sources.manifest import ManifestSource

SOURCES: dict[str, type[DatasetSource]] = {"abaw": AbawSource, "manifest": ManifestSource, "folders": FoldersSource}


def make_source(name: str, **kwargs) -> DatasetSource:
    """Builds the adapter registered as ``name`` with its keyword arguments.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](**kwargs)


__all__ = ["SOURCES", "AbawSource", "DatasetSource", "FoldersSource", "ManifestSource", "make_source"]
