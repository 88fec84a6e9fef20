"""Rebalancing: per-task draws over composite buckets, bucket weights per mode, downsample epochs, class and AU
loss weights, and the measured mix of the first batches."""

import logging
import math

import numpy as np
import pytest
from trainer_data import write_dataset

from tfrecords_schema import DatasetInfo, ShardInfo, SplitInfo
from tfrecords_schema import buckets as tfrecords_buckets
from trainer.input import pipeline as trainer_input
from trainer.input import sampling
from trainer.input.input_mix import measure_input_mix


def _info(bucket_records: dict[str, int], class_frames: dict[str, int] | None = None) -> DatasetInfo:
    """A DatasetInfo whose train split has one shard per bucket with the given record counts."""
    shards = [ShardInfo(path=f"train/x-{b}", bucket=b, num_records=n, num_frames=16 * n, num_bytes=0)
              for b, n in bucket_records.items() if n]
    train = SplitInfo(num_clips=sum(bucket_records.values()), bucket_clips=dict(bucket_records), shards=shards,
                      class_frames={"expr": class_frames or {b: 16 * n for b, n in bucket_records.items()}})
    names = list(bucket_records)
    return DatasetInfo(name="x", tasks=["expr"], label_names={"expression": names}, bucket_by="expression",
                       bucket_names=names, crop_size=32, clip_length=16, splits={"train": train})


def test_bucket_weights_follow_each_mode_and_sum_to_one():
    info = _info({"A": 40, "B": 10, "Empty": 0})
    assert sampling.bucket_weights(info, "natural") == pytest.approx({"A": 0.8, "B": 0.2})
    assert sampling.bucket_weights(info, "balanced") == pytest.approx({"A": 0.5, "B": 0.5})
    assert sampling.bucket_weights(info, "sqrt") == pytest.approx({"A": 2 / 3, "B": 1 / 3})
    assert sampling.bucket_weights(info, "downsample") == pytest.approx({"A": 0.5, "B": 0.5})
    for mode in sampling.SAMPLING_MODES:
        assert math.isclose(sum(sampling.bucket_weights(info, mode).values()), 1.0)


def test_downsample_epoch_holds_the_minority_count_from_every_bucket():
    info = _info({"A": 40, "B": 10, "C": 25, "Empty": 0})
    assert sampling.clips_per_epoch(info, "downsample") == 30
    assert sampling.clips_per_epoch(info, "balanced") is None


def test_every_bucket_empty_is_an_error():
    with pytest.raises(ValueError, match="every train bucket is empty"):
        sampling.bucket_weights(_info({"A": 0, "B": 0}), "balanced")


def test_unknown_modes_list_the_valid_values():
    with pytest.raises(ValueError, match="natural, balanced, sqrt, downsample"):
        sampling.bucket_weights(_info({"A": 1}), "oversample")
    with pytest.raises(ValueError, match="none, inverse, sqrt"):
        sampling.class_loss_weights(_info({"A": 1}), "expression", "focal")
    with pytest.raises(ValueError, match="expression"):
        sampling.class_loss_weights(_info({"A": 1}), "valence_arousal", "inverse")


def test_class_loss_weights_are_inverse_frequencies_with_mean_one_over_frames():
    frames = {"A": 300, "B": 100, "C": 0}
    info = _info({"A": 1, "B": 1, "C": 1}, class_frames=frames)
    counts = np.array([300.0, 100.0, 0.0])
    np.testing.assert_array_equal(sampling.class_loss_weights(info, "expression", "none"), [1, 1, 1])
    inverse = sampling.class_loss_weights(info, "expression", "inverse")
    assert inverse[1] / inverse[0] == pytest.approx(3.0)
    assert inverse[2] == 0.0
    assert (inverse * counts).sum() / counts.sum() == pytest.approx(1.0)
    root = sampling.class_loss_weights(info, "expression", "sqrt")
    assert root[1] / root[0] == pytest.approx(math.sqrt(3.0))
    assert (root * counts).sum() / counts.sum() == pytest.approx(1.0)


def test_class_loss_weights_need_expression_labels():
    info = _info({"A": 1})
    info.label_names = {"expression": []}
    with pytest.raises(ValueError, match="no expression labels"):
        sampling.class_loss_weights(info, "expression", "inverse")


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """Four buckets of 12 / 6 / 3 / 1 clips; every frame labelled with a face, so frame 0 tells the bucket."""
    root = str(tmp_path_factory.mktemp("skewed"))
    info = write_dataset(root, num_clips_per_class={"A": 12, "B": 6, "C": 3, "D": 1}, clip_length=4,
                         short_clip_every=0, crop_size=16, tasks=("expr",), invalid_fraction=0.0,
                         no_face_fraction=0.0, num_validation_shards=0, seed=3)
    return root, info


@pytest.mark.parametrize("mode", sampling.SAMPLING_MODES)
def test_batches_mix_buckets_as_requested(skewed, mode, caplog):
    root, info = skewed
    caplog.set_level(logging.INFO, logger="trainer.input.pipeline")
    requested = sampling.bucket_weights(info, mode)
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=100, sampling=mode,
                                               seed=11)
    buckets = np.concatenate([targets["expression"][:, 0].numpy() for _, targets, _ in dataset.take(20)])
    n = len(buckets)
    observed = np.bincount(buckets, minlength=4) / n
    expected = np.array([requested[b] for b in info.bucket_names[:4]])
    # Chi-square goodness of fit, 3 degrees of freedom: 16.27 is the 0.001 critical value.
    chi2 = float((((observed - expected) * n) ** 2 / (expected * n)).sum())
    assert chi2 < 16.27, (mode, observed, expected)
    assert "target class mix" in caplog.text


def test_natural_and_balanced_mixes_really_differ(skewed):
    root, info = skewed

    def share_of_d(mode):
        dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=100,
                                                   sampling=mode, seed=5)
        labels = np.concatenate([t["expression"][:, 0].numpy() for _, t, _ in dataset.take(10)])
        return float((labels == 3).mean())

    assert share_of_d("natural") < 0.09  # 1 of 22 clips: ~0.045
    assert share_of_d("balanced") > 0.18  # 1 of 4 buckets: 0.25


def test_downsample_epochs_hold_exactly_the_minority_count_from_every_bucket(skewed):
    root, info = skewed
    epoch = sampling.clips_per_epoch(info, "downsample")
    assert epoch == 4  # minority bucket D has 1 clip, 4 buckets
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=epoch,
                                               sampling="downsample", seed=2)
    seen_a = set()
    for images, targets, _ in dataset.take(12):  # 12 epochs
        buckets = targets["expression"][:, 0].numpy()
        assert sorted(buckets.tolist()) == [0, 1, 2, 3]
        seen_a.add(images[int(np.argmax(buckets == 0))].numpy().tobytes())
    assert len(seen_a) > 3  # the majority bucket gives a different clip in different epochs


def test_bucket_without_expression_labels_is_not_sampled_for_the_expression_task(tmp_path):
    root = str(tmp_path)
    info = write_dataset(root, num_clips_per_class={"A": 2, "B": 2}, num_clips_without_expression=6,
                         clip_length=4, short_clip_every=0, crop_size=16, invalid_fraction=0.0,
                         no_face_fraction=0.0, num_validation_shards=0)
    assert info.bucket_names == ["A", "B", "no_expression"]
    assert sampling.bucket_weights(info, "balanced", "expr") == pytest.approx({"A": 0.5, "B": 0.5})
    # Expression buckets name no VA or AU class: multi draws expr by class, va and au by the buckets themselves.
    assert sampling.unbalanced_tasks(info, "multi") == ["va", "au"]
    assert sampling.bucket_weights(info, "balanced", "multi") == pytest.approx(
        {"A": 1 / 6 + 2 / 9, "B": 1 / 6 + 2 / 9, "no_expression": 2 / 9})
    assert sampling.clips_per_epoch(info, "downsample", "expr") == 4

    def zero_weight_clips(task):
        dataset = trainer_input.make_train_dataset(root, info, task=task, seq_len=2, batch_size=50,
                                                   sampling="natural")
        _, _, weights = next(iter(dataset))
        return int((weights["expression"].numpy().sum(axis=1) == 0).sum())

    assert zero_weight_clips("expr") == 0  # every sampled clip has expression targets
    assert zero_weight_clips("multi") > 10  # drawn 0.4 of the time for VA / AU, whose labels they carry


@pytest.mark.parametrize("mode", ["natural", "downsample"])
def test_input_mix_measures_the_clips_of_the_training_stream_without_decoding(skewed, mode):
    root, info = skewed
    batch, batches = 20, 3
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=batch,
                                               sampling=mode, seed=4)
    labels = np.concatenate([t["expression"][:, 0].numpy() for _, t, _ in dataset.take(batches)])
    expected = np.bincount(labels, minlength=4) / len(labels)
    report = measure_input_mix(root, info, task="expr", sampling=mode, seq_len=2, batch_size=batch,
                               num_batches=batches, seed=4)
    head = report["heads"]["expression"]
    assert report["clips"] == batch * batches and report["reads_per_clip"] == 1.0
    assert [head["delivered"][c] for c in "ABCD"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert head["target"] == pytest.approx(sampling.class_targets(info, mode, "expr"), abs=1e-4)
    assert head["labelled_fraction"] == 1.0 and head["trained"]


COMPOSITE = {"A|v0_a0|au": 30, "A|no_va|no_au": 10, "B|v0_a0|no_au": 5, "no_expression|v1_a1|au": 20}


def _composite_info(bucket_records: dict[str, int], au_positives: dict[str, int] | None = None,
                    au_frames: int = 0) -> DatasetInfo:
    """A composite-bucket (``bucket_by tasks``) DatasetInfo, one shard per bucket."""
    shards = [ShardInfo(path=f"train/x-{i}", bucket=b, num_records=n, num_frames=16 * n, num_bytes=0)
              for i, (b, n) in enumerate(bucket_records.items())]
    train = SplitInfo(num_clips=sum(bucket_records.values()), bucket_clips=dict(bucket_records), shards=shards,
                      class_frames={"au": au_positives or {}}, task_frames={"au": au_frames} if au_frames else {})
    label_names = {"expression": ["A", "B"], "valence_arousal": ["valence", "arousal"],
                   "action_units": list(au_positives or {"AU1": 0})}
    return DatasetInfo(name="x", tasks=["expr", "va", "au"], label_names=label_names, bucket_by="tasks",
                       bucket_names=tfrecords_buckets.bucket_names("tasks", ["expr", "va", "au"], label_names),
                       crop_size=32, clip_length=16, splits={"train": train})


def test_each_task_draws_by_its_own_classes_and_never_reads_buckets_without_its_labels():
    info = _composite_info(COMPOSITE)
    assert sampling.balanced_tasks(info) == ["expr", "va", "au"] and not sampling.unbalanced_tasks(info, "multi")
    expr = sampling.bucket_weights(info, "balanced", "expr")
    assert expr == pytest.approx({"A|v0_a0|au": 0.5 * 30 / 40, "A|no_va|no_au": 0.5 * 10 / 40, "B|v0_a0|no_au": 0.5})
    va = sampling.bucket_weights(info, "balanced", "va")
    assert va == pytest.approx({"A|v0_a0|au": 0.5 * 30 / 35, "B|v0_a0|no_au": 0.5 * 5 / 35,
                                "no_expression|v1_a1|au": 0.5})
    assert sampling.bucket_weights(info, "balanced", "au") == pytest.approx(
        {"A|v0_a0|au": 0.6, "no_expression|v1_a1|au": 0.4})  # one AU class: natural among the AU-labelled clips
    multi = sampling.bucket_weights(info, "balanced", "multi")
    au = sampling.bucket_weights(info, "balanced", "au")
    assert multi == pytest.approx({b: (expr.get(b, 0) + va.get(b, 0) + au.get(b, 0)) / 3 for b in COMPOSITE})
    assert sampling.class_targets(info, "sqrt", "expr") == pytest.approx(
        {"A": math.sqrt(40) / (math.sqrt(40) + math.sqrt(5)), "B": math.sqrt(5) / (math.sqrt(40) + math.sqrt(5))})
    assert sampling.class_targets(info, "natural", "va") == pytest.approx({"v0_a0": 35 / 55, "v1_a1": 20 / 55})
    # One stream per class of the task (the union of its buckets); downsample: the minority count per class.
    draw = sampling.bucket_draw(info, "downsample", "va")
    assert sorted(s.buckets for s in draw.streams) == [("A|v0_a0|au", "B|v0_a0|no_au"), ("no_expression|v1_a1|au",)]
    assert [s.per_epoch for s in draw.streams] == [20, 20] and draw.clips_per_epoch == 40
    assert sampling.clips_per_epoch(info, "downsample", "expr") == 10
    # The VA cell mix that the expression draw gives (what input_mix.json calls the VA head's target).
    assert sampling.expected_class_mix(info, expr, "va") == pytest.approx({"v0_a0": 1.0})
    assert sampling.expected_class_mix(info, va, "expr") == pytest.approx(
        {"A": (0.5 * 30 / 35) / 0.5, "B": (0.5 * 5 / 35) / 0.5})


def test_au_positive_weights_follow_each_aus_rarity_clipped(caplog):
    info = _composite_info(COMPOSITE, {"AU1": 500, "AU2": 100, "AU3": 10, "AU4": 0}, au_frames=1000)
    assert sampling.au_positive_rates(info) == pytest.approx({"AU1": 0.5, "AU2": 0.1, "AU3": 0.01, "AU4": 0.0})
    assert sampling.au_positive_weights(info, "none") is None
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(sampling.au_positive_weights(info, "sqrt"), [1.0, 3.0, math.sqrt(99), 10.0],
                                   rtol=1e-6)
    assert "AU(s) AU4 are never positive on the train split" in caplog.text
    np.testing.assert_allclose(sampling.au_positive_weights(info, "inverse"), [1.0, 9.0, 10.0, 10.0], rtol=1e-6)
    with pytest.raises(ValueError, match="none, sqrt, inverse"):
        sampling.au_positive_weights(info, "focal")
    older = _composite_info(COMPOSITE, {"AU1": 5})  # a version 1-2 output: no AU-labelled frame count
    assert sampling.au_positive_weights(older, "sqrt") is None


def test_multi_leaves_out_a_task_labelled_only_outside_the_train_split():
    info = _composite_info({"A|no_va|au": 30, "B|no_va|no_au": 10})  # VA labelled in validation only
    multi = sampling.bucket_draw(info, "balanced", "multi")
    assert {s.task for s in multi.streams} == {"expr", "au"}
    assert multi.weights == pytest.approx({"A|no_va|au": 0.25 + 0.5, "B|no_va|no_au": 0.25})
    with pytest.raises(ValueError, match="no train clip carries va labels"):
        sampling.bucket_draw(info, "balanced", "va")


def test_many_streams_share_bounded_shuffle_buffers_and_open_files():
    from trainer.input import records

    weights = [0.5] + [0.5 / 300] * 300  # one big class and 300 rare ones, as composite buckets give
    buffers = records.stream_budget(weights, records.RECORD_SHUFFLE_CLIPS, records.MIN_BUCKET_SHUFFLE)
    assert buffers[0] == records.RECORD_SHUFFLE_CLIPS // 2 and set(buffers[1:]) == {records.MIN_BUCKET_SHUFFLE}
    assert sum(buffers) <= records.RECORD_SHUFFLE_CLIPS + records.MIN_BUCKET_SHUFFLE * len(weights)
    assert records.stream_budget([0.125] * 8, records.RECORD_SHUFFLE_CLIPS, 2) == [64] * 8  # as before: 512 / 8
    assert sum(records.stream_budget(weights, records.OPEN_SHARDS, 1)) <= records.OPEN_SHARDS + len(weights)
