"""Rebalancing: bucket weights per mode, downsample epochs, class loss weights, and the empirical mix of batches."""

import logging
import math

import numpy as np
import pytest
from trainer_data import write_dataset

from tfrecords_schema import DatasetInfo, ShardInfo, SplitInfo
from trainer.input import mixing as stream_mix
from trainer.input import pipeline as trainer_input
from trainer.input import sampling


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
                                               augment=False, seed=11)
    buckets = np.concatenate([targets["expression"][:, 0].numpy() for _, targets, _ in dataset.take(20)])
    n = len(buckets)
    observed = np.bincount(buckets, minlength=4) / n
    expected = np.array([requested[b] for b in info.bucket_names])
    # Chi-square goodness of fit, 3 degrees of freedom: 16.27 is the 0.001 critical value.
    chi2 = float((((observed - expected) * n) ** 2 / (expected * n)).sum())
    assert chi2 < 16.27, (mode, observed, expected)
    assert "requested bucket weights" in caplog.text


def test_natural_and_balanced_mixes_really_differ(skewed):
    root, info = skewed

    def share_of_d(mode):
        dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=100,
                                                   sampling=mode, augment=False, seed=5)
        labels = np.concatenate([t["expression"][:, 0].numpy() for _, t, _ in dataset.take(10)])
        return float((labels == 3).mean())

    assert share_of_d("natural") < 0.09  # 1 of 22 clips: ~0.045
    assert share_of_d("balanced") > 0.18  # 1 of 4 buckets: 0.25


def test_downsample_epochs_hold_exactly_the_minority_count_from_every_bucket(skewed):
    root, info = skewed
    epoch = sampling.clips_per_epoch(info, "downsample")
    assert epoch == 4  # minority bucket D has 1 clip, 4 buckets
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=epoch,
                                               sampling="downsample", augment=False, seed=2)
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
    assert sampling.bucket_weights(info, "balanced", "multi") == pytest.approx(
        {"A": 1 / 3, "B": 1 / 3, "no_expression": 1 / 3})
    assert sampling.clips_per_epoch(info, "downsample", "expr") == 4

    def zero_weight_clips(task):
        dataset = trainer_input.make_train_dataset(root, info, task=task, seq_len=2, batch_size=50,
                                                   sampling="natural", augment=False)
        _, _, weights = next(iter(dataset))
        return int((weights["expression"].numpy().sum(axis=1) == 0).sum())

    assert zero_weight_clips("expr") == 0  # every sampled clip has expression targets
    assert zero_weight_clips("multi") > 20  # 6 of 10 clips have none, but carry VA / AU targets


@pytest.mark.parametrize("mode", ["natural", "downsample"])
def test_empirical_bucket_mix_counts_the_buckets_of_the_training_stream(skewed, mode):
    root, info = skewed
    batch, batches = 20, 3
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=batch,
                                               sampling=mode, augment=False, seed=4)
    labels = np.concatenate([t["expression"][:, 0].numpy() for _, t, _ in dataset.take(batches)])
    expected = np.bincount(labels, minlength=4) / len(labels)
    mix = stream_mix.empirical_bucket_mix(root, info, task="expr", sampling=mode, num_clips=batch * batches,
                                          seed=4)
    assert list(mix) == info.bucket_names
    assert [mix[b] for b in info.bucket_names] == pytest.approx(expected.tolist())


def test_train_logs_requested_and_empirical_bucket_mix_with_the_largest_deviation(skewed):
    from trainer.training.config import TrainConfig
    from trainer.training.plan import CLASS_MIX_BATCHES, bucket_mix_report

    root, info = skewed
    config = TrainConfig(data=root, job_dir="j", task="expr", sampling="balanced", batch_size=25, seq_len=2)
    report = bucket_mix_report(config, info, input_seed=0)
    assert report["clips"] == CLASS_MIX_BATCHES * 25
    assert report["requested"] == pytest.approx({b: 0.25 for b in info.bucket_names})
    assert sum(report["empirical"].values()) == pytest.approx(1.0, abs=1e-3)
    worst = report["max_deviation_bucket"]
    assert report["max_abs_deviation"] == pytest.approx(abs(report["empirical"][worst] - 0.25), abs=1e-4)
    assert report["max_abs_deviation"] == pytest.approx(
        max(abs(v - 0.25) for v in report["empirical"].values()), abs=1e-4)
