"""Rebalancing buckets: how the Beam job names them and the trainer reads them.

The train split is written as one shard set per bucket, and a clip's
``clip/label/index`` indexes ``DatasetInfo.bucket_names``.
"""

from __future__ import annotations

import numpy as np

from tfrecords_schema.dataset_info import TASK_EXPRESSION, TASK_VALENCE_AROUSAL

BUCKET_BY_EXPRESSION = "expression"  # the clip's dominant valid expression class.
BUCKET_BY_VA_GRID = "va_grid"  # the valence-arousal grid cell holding most of the clip's valid frames.
BUCKET_BY_NONE = "none"  # one bucket.
BUCKET_BY = (BUCKET_BY_EXPRESSION, BUCKET_BY_VA_GRID, BUCKET_BY_NONE)

NO_EXPRESSION = "no_expression"  # bucket of clips without any valid expression label.
NO_VA = "no_va"  # bucket of clips without any valid valence/arousal label.
ALL = "all"  # the single bucket of bucket_by "none".
VA_GRID = 4  # cells per axis of the valence-arousal grid over [-1, 1].

# The task whose labels define the buckets, and the bucket of clips without that label.
BUCKETING_TASK = {BUCKET_BY_EXPRESSION: TASK_EXPRESSION, BUCKET_BY_VA_GRID: TASK_VALENCE_AROUSAL}
UNLABELLED_BUCKET = {BUCKET_BY_EXPRESSION: NO_EXPRESSION, BUCKET_BY_VA_GRID: NO_VA}


def va_cell(valence: float, arousal: float, grid: int = VA_GRID) -> str:
    """Name of the grid cell of a (valence, arousal) pair, e.g. ``"v0_a3"`` (v, a counted from -1 upwards)."""

    def index(v: float) -> int:
        return int(min(grid - 1, max(0, np.floor((v + 1.0) / 2.0 * grid))))

    return f"v{index(valence)}_a{index(arousal)}"


def va_cell_names(grid: int = VA_GRID) -> list[str]:
    """Every grid cell name, valence-major."""
    return [f"v{i}_a{j}" for i in range(grid) for j in range(grid)]
