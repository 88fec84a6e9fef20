"""Rebalancing buckets: how the Beam job names them and the trainer reads them.

The train split is written as one shard set per non-empty bucket, and a clip's ``clip/label/index`` indexes
``DatasetInfo.bucket_names``. Every bucket stands for a class of one or more tasks (:func:`bucket_classes`):

* ``tasks`` (the default): the *composite* bucket of the clip's class for every converted task, named by
  :func:`composite_name` and read back by :func:`parse_composite`, e.g. ``"Neutral|v2_a3|au"``: the clip's
  majority valid expression class (or ``no_expression``), its majority valence-arousal grid cell (or
  ``no_va``), and whether it has action-unit labels (``au`` / ``no_au``). Only the converted tasks take part,
  in :data:`tfrecords_schema.tasks.TASKS` order. One conversion serves every task: the trainer draws clips by
  the classes of the task it trains (``trainer.input.sampling``);
* ``expression``: the expression class alone (a version 1-2 conversion's default);
* ``va_grid``: the valence-arousal grid cell alone;
* ``none``: one bucket, ``all``, of no class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfrecords_schema.tasks import HEAD_EXPRESSION, TASK_ACTION_UNITS, TASK_EXPRESSION, TASK_VALENCE_AROUSAL, TASKS

BUCKET_BY_TASKS = "tasks"  # the clip's class for every converted task: one composite bucket per combination.
BUCKET_BY_EXPRESSION = "expression"  # the clip's dominant valid expression class.
BUCKET_BY_VA_GRID = "va_grid"  # the valence-arousal grid cell holding most of the clip's valid frames.
BUCKET_BY_NONE = "none"  # one bucket.
BUCKET_BY = (BUCKET_BY_TASKS, BUCKET_BY_EXPRESSION, BUCKET_BY_VA_GRID, BUCKET_BY_NONE)

NO_EXPRESSION = "no_expression"  # class of clips without any valid expression label.
NO_VA = "no_va"  # class of clips without any valid valence/arousal label.
AU_LABELLED = "au"  # class of clips with at least one frame of valid action-unit labels.
NO_AU = "no_au"  # class of clips without any.
ALL = "all"  # the single bucket of bucket_by "none".
VA_GRID = 4  # cells per axis of the valence-arousal grid over [-1, 1].
SEPARATOR = "|"  # between the task classes of a composite bucket name.

# The class of a clip without any valid label of the task.
UNLABELLED_CLASS = {TASK_EXPRESSION: NO_EXPRESSION, TASK_VALENCE_AROUSAL: NO_VA, TASK_ACTION_UNITS: NO_AU}
# The task whose class a single-task bucketing names.
BUCKETING_TASK = {BUCKET_BY_EXPRESSION: TASK_EXPRESSION, BUCKET_BY_VA_GRID: TASK_VALENCE_AROUSAL}


def va_cell_index(values: np.ndarray, grid: int = VA_GRID) -> np.ndarray:
    """Grid bin (0 .. grid - 1, counted from -1 upwards) of each value in [-1, 1], any shape."""
    return np.clip(np.floor((np.asarray(values, np.float64) + 1.0) / 2.0 * grid), 0, grid - 1).astype(np.int64)


def va_cell(valence: float, arousal: float, grid: int = VA_GRID) -> str:
    """Name of the grid cell of a (valence, arousal) pair, e.g. ``"v0_a3"`` (v, a counted from -1 upwards)."""
    return f"v{int(va_cell_index(valence, grid))}_a{int(va_cell_index(arousal, grid))}"


def va_cell_names(grid: int = VA_GRID) -> list[str]:
    """Every grid cell name, valence-major (cell ``v{i}_a{j}`` is entry ``i * grid + j``)."""
    return [f"v{i}_a{j}" for i in range(grid) for j in range(grid)]


def va_cells(valence_arousal: np.ndarray, grid: int = VA_GRID) -> np.ndarray:
    """The cell of each (valence, arousal) row of ``[N, 2]`` values: int64 ``[N]`` indexes of :func:`va_cell_names`."""
    bins = va_cell_index(np.reshape(valence_arousal, (-1, 2)), grid)
    return bins[:, 0] * grid + bins[:, 1]


def task_classes(task: str, label_names: Mapping[str, Sequence[str]]) -> list[str]:
    """The bucket classes of ``task``, the class of clips without its labels last.

    Expression: its class names then ``no_expression``; valence-arousal: the grid cells then ``no_va``; action
    units: ``au``, ``no_au`` (AUs are many labels per frame: a clip's AU class only says whether it has them).
    """
    if task == TASK_EXPRESSION:
        return [*label_names.get(HEAD_EXPRESSION, []), NO_EXPRESSION]
    if task == TASK_VALENCE_AROUSAL:
        return [*va_cell_names(), NO_VA]
    if task == TASK_ACTION_UNITS:
        return [AU_LABELLED, NO_AU]
    raise ValueError(f"unknown task {task!r}; valid tasks: {list(TASKS)}")


def composite_tasks(tasks: Sequence[str]) -> list[str]:
    """The tasks of a composite bucket name: the converted ones, in :data:`TASKS` order."""
    return [t for t in TASKS if t in tasks]


def composite_name(classes: Mapping[str, str], tasks: Sequence[str]) -> str:
    """The composite bucket of a clip: its class for every task of ``tasks`` (:func:`composite_tasks` order).

    :func:`parse_composite` is the inverse. With no task the bucket is ``all``.
    """
    parts = composite_tasks(tasks)
    if not parts:
        return ALL
    for task in parts:
        if SEPARATOR in classes[task]:
            raise ValueError(f"class {classes[task]!r} of task {task} holds {SEPARATOR!r}, the separator of "
                             "composite bucket names; rename the class or convert with another --bucket_by")
    return SEPARATOR.join(classes[task] for task in parts)


def parse_composite(name: str, tasks: Sequence[str]) -> dict[str, str]:
    """``{task: class}`` of a composite bucket name (:func:`composite_name`'s inverse).

    Raises:
        ValueError: the name does not have one class per task.
    """
    parts = composite_tasks(tasks)
    if not parts:
        if name != ALL:
            raise ValueError(f"bucket {name!r} is not {ALL!r}, the one bucket of an output without tasks")
        return {}
    values = name.split(SEPARATOR)
    if len(values) != len(parts):
        raise ValueError(f"bucket {name!r} does not name one class per task {parts} "
                         f"(classes joined by {SEPARATOR!r})")
    return dict(zip(parts, values))


def bucket_names(bucket_by: str, tasks: Sequence[str], label_names: Mapping[str, Sequence[str]]) -> list[str]:
    """Every bucket name of ``bucket_by`` (a clip's ``clip/label/index`` indexes this list).

    ``tasks``: the product of every converted task's classes (:func:`task_classes`), first task slowest.
    """
    if bucket_by == BUCKET_BY_TASKS:
        names = [""]
        for task in composite_tasks(tasks):
            names = [f"{n}{SEPARATOR if n else ''}{c}" for n in names for c in task_classes(task, label_names)]
        return names if composite_tasks(tasks) else [ALL]
    if bucket_by in BUCKETING_TASK:
        return task_classes(BUCKETING_TASK[bucket_by], label_names)
    if bucket_by == BUCKET_BY_NONE:
        return [ALL]
    raise ValueError(f"unknown bucket_by {bucket_by!r}; valid values: {list(BUCKET_BY)}")


def bucket_classes(bucket_by: str, name: str, tasks: Sequence[str]) -> dict[str, str]:
    """``{task: class}`` of the bucket ``name``: the tasks whose class every clip of the bucket shares.

    A task missing from the result is one the buckets cannot balance (e.g. ``va`` over ``expression`` buckets).

    Raises:
        ValueError: an unknown ``bucket_by``, or a composite name without one class per task.
    """
    if bucket_by == BUCKET_BY_TASKS:
        return parse_composite(name, tasks)
    if bucket_by in BUCKETING_TASK:
        return {BUCKETING_TASK[bucket_by]: name}
    if bucket_by == BUCKET_BY_NONE:
        return {}
    raise ValueError(f"unknown bucket_by {bucket_by!r}; valid values: {list(BUCKET_BY)}")
