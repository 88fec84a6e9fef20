"""The selection split: a subject-disjoint slice of the train subjects, held out to select the best epoch on.

A model's best epoch picked on the split it is then reported on gives an optimistic figure. The conversion therefore
moves the train tracks of about ``--select_fraction`` of the train subjects into a split of their own, ``selection``
(written like validation); the trainer selects on it by default, and validation is touched only by the final
evaluation. A subject goes there when the stable hash of its id (:func:`beam_jobs.sources.folds.subject_unit`,
SHA-256, the same on every machine) falls below the fraction, so every frame of a subject stays on one side and a
dataset that grows keeps its assignments. A train split with fewer than ``1 / fraction`` subjects (not even one
subject's worth) holds nothing out, and the trainer says so; one with more always gets a slice (the subject of the
smallest hash when no hash falls below the fraction).

Example::

    discovery = hold_out(source.discover(), fraction=0.1)
"""

from __future__ import annotations

import dataclasses

from beam_jobs.sources.base import Discovery
from beam_jobs.sources.folds import subject_unit
from tfrecords_schema import SPLIT_SELECTION, SPLIT_TRAIN

DEFAULT_SELECT_FRACTION = 0.1


def held_out_subjects(subjects, fraction: float) -> set[str]:
    """The subjects of ``subjects`` that go to the selection split (see the module docstring)."""
    subjects = sorted(set(subjects))
    if len(subjects) * fraction < 1:
        return set()
    return {s for s in subjects if subject_unit(s) < fraction} or {min(subjects, key=subject_unit)}


def hold_out(discovery: Discovery, fraction: float) -> Discovery:
    """``discovery`` with the train tracks of the held-out subjects moved to the selection split."""
    train = [t.subject_id for t in discovery.tracks if t.split == SPLIT_TRAIN]
    held = held_out_subjects(train, fraction)
    if not held:
        return discovery
    tracks = [dataclasses.replace(t, split=SPLIT_SELECTION) if t.split == SPLIT_TRAIN and t.subject_id in held else t
              for t in discovery.tracks]
    return dataclasses.replace(discovery, tracks=sorted(tracks, key=lambda t: t.track_id))
