"""Well-mixed batches: hash-ordered shards spread every video over the stream; frames balanced by class; every
task drawn by its own classes from one (composite-bucket) conversion of an Aff-Wild2-like layout."""

import itertools

import numpy as np
import pytest
from mixing_data import distinct_videos_per_draws, write_affwild_layout, write_layout

from beam_jobs.pipeline.shards import shard_order_key
from trainer.input import mixing as stream_mix
from trainer.input import pipeline as trainer_input
from trainer.input import sampling
from trainer.input.input_mix import measure_input_mix, summary_line
from trainer.training import config as config_lib

# Four buckets of 12 videos x 80 consecutive clips in 2 shards each: a shard holds far more clips than the
# trainer's per-bucket shuffle buffer (512 // 4), as with real videos.
LAYOUT = {"num_buckets": 4, "videos_per_bucket": 12, "clips_per_video": 80, "shards_per_bucket": 2}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    out = {}
    for order in ("id", "hash"):
        root = str(tmp_path_factory.mktemp(order))
        out[order] = root, write_layout(root, order=order, **LAYOUT)
    return out


def test_shard_order_key_is_a_stable_hash_that_breaks_up_videos():
    ids = [f"train/video{v}/{f:06d}" for v in range(3) for f in range(1, 200, 8)]
    ordered = sorted(ids, key=shard_order_key)
    assert sorted(ids, key=shard_order_key) == ordered  # deterministic
    assert shard_order_key("train/a/000001")[0].hex().startswith("56774d01")  # SHA-256, fixed across runs and machines
    runs = sum(a.split("/")[1] != b.split("/")[1] for a, b in itertools.pairwise(ordered))
    assert runs > len(ids) / 2  # consecutive records mostly come from different videos (by id: 2 changes)


def test_hash_ordered_shards_give_batches_of_many_more_videos(layouts):
    by_id = distinct_videos_per_draws(*layouts["id"], num_clips=2048)
    by_hash = distinct_videos_per_draws(*layouts["hash"], num_clips=2048)
    uniform = 12 * (1 - (11 / 12) ** 8)  # 8 draws with replacement from a bucket's 12 home videos
    assert by_hash >= 0.95 * uniform, (by_id, by_hash)
    assert by_hash - by_id >= 1.0, (by_id, by_hash)


def test_balanced_sampling_skews_the_frame_mix_and_balance_frames_corrects_it(layouts):
    root, info = layouts["hash"]
    kwargs = {"task": "expr", "seq_len": 4, "batch_size": 16, "num_batches": 128, "sampling": "balanced"}
    natural = stream_mix.empirical_frame_mix(root, info, seed=1, **kwargs)
    assert natural["Neutral"] > 0.25 + 0.05, natural  # the other classes' clips hold Neutral frames too
    assert stream_mix.frame_mix_targets(info, "balanced", "expr") == {c: 0.25 for c in info.expression_names}
    weights = stream_mix.balanced_frame_weights(root, info, task="expr", seq_len=4, sampling="balanced", seed=0)
    assert weights[0] < 1.0 < weights[1:].min()
    balanced = stream_mix.empirical_frame_mix(root, info, seed=1, class_weights=weights, **kwargs)
    assert max(abs(v - 0.25) for v in balanced.values()) <= 0.02, balanced  # measured on another seed
    report = stream_mix.frame_mix_report(root, info, task="expr", sampling="balanced", seq_len=4, batch_size=16,
                                         num_batches=4, seed=1, class_weights=weights)
    assert report["requested"] == {c: 0.25 for c in info.expression_names} and report["batches"] == 4
    assert report["max_abs_deviation"] == pytest.approx(max(abs(v - 0.25) for v in report["empirical"].values()),
                                                        abs=1e-4)
    # The training stream carries exactly these weights.
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=8, class_weights=weights)
    _, targets, frame_weights = next(iter(dataset))
    np.testing.assert_allclose(frame_weights["expression"], weights[targets["expression"].numpy()], rtol=1e-6)


def test_balance_frames_options_are_checked():
    base = {"data": "d", "job_dir": "j"}
    with pytest.raises(config_lib.ConfigError, match="leave --loss_weighting none"):
        config_lib.TrainConfig(**base, balance_frames=True, loss_weighting="inverse")
    with pytest.raises(config_lib.ConfigError, match="--task expr or multi"):
        config_lib.TrainConfig(**base, balance_frames=True, task="va")
    assert config_lib.parse_train_config(["--data", "d", "--job_dir", "j", "--balance_frames"]).balance_frames


def test_balance_frames_on_data_without_expression_labels_says_so(tmp_path):
    from trainer_data import write_dataset
    info = write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=4, crop_size=16,
                         tasks=("va",))
    # VA-only data: said as it is (it read "needs buckets that name the expression class ... bucketed by 'tasks'").
    with pytest.raises(ValueError, match="this data has no expression labels: leave it out"):
        stream_mix.frame_mix_targets(info, "balanced", "multi")


@pytest.fixture(scope="module")
def affwild(tmp_path_factory):
    """The same Aff-Wild2-like clips bucketed two ways: composite buckets (now) and expression buckets (before)."""
    out = {}
    for bucket_by in ("tasks", "expression"):
        root = str(tmp_path_factory.mktemp(bucket_by))
        out[bucket_by] = root, write_affwild_layout(root, bucket_by=bucket_by, videos=120, clips_per_video=8)
    return out


@pytest.mark.parametrize("task, head", [("expr", "expression"), ("va", "valence_arousal"), ("au", "action_units")])
def test_every_task_is_drawn_by_its_classes_from_one_conversion(affwild, task, head):
    root, info = affwild["tasks"]
    report = measure_input_mix(root, info, task=task, sampling="balanced", seq_len=8, batch_size=32, seed=0)
    assert report["batches"] == 100 and report["reads_per_clip"] <= 1.25
    trained = report["heads"][head]
    assert trained["trained"] and trained["labelled_fraction"] >= 0.9, trained
    assert trained["max_abs_deviation"] <= 0.02, trained
    if task != "au":  # balanced: uniform over the classes with clips
        classes = sampling.class_clip_counts(info, task)
        assert trained["target"] == pytest.approx({c: 1 / len(classes) for c in classes}, abs=1e-4)
    else:  # the delivered AU positive rates against the data's (AU24 about 2.6 %)
        assert trained["target"]["AU24"] == pytest.approx(0.026, abs=0.01)
        assert set(trained["delivered"]) == set(trained["target"])
    assert not report["unbalanced_tasks"]
    assert "reads per clip 1.00" in summary_line(report)


def test_expression_buckets_starve_va_and_the_report_says_so(affwild):
    root, info = affwild["expression"]
    report = measure_input_mix(root, info, task="va", sampling="balanced", seq_len=8, batch_size=32, seed=0)
    va = report["heads"]["valence_arousal"]
    assert report["unbalanced_tasks"] == ["va"] and va["target"] is None
    assert va["labelled_fraction"] < 0.9 and report["reads_per_clip"] > 1.1  # what composite buckets fix
    assert "not balanced" in summary_line(report)


@pytest.mark.parametrize("mode", ["natural", "sqrt", "downsample"])
def test_every_sampling_mode_reports_its_own_targets(affwild, mode):
    root, info = affwild["tasks"]
    report = measure_input_mix(root, info, task="va", sampling=mode, seq_len=8, batch_size=32, num_batches=2)
    assert report["heads"]["valence_arousal"]["target"] == pytest.approx(
        {c: round(v, 4) for c, v in sampling.class_targets(info, mode, "va").items()})
    assert report["sampling"] == mode


@pytest.mark.parametrize("bucket_by, tasks, expected", [
    ("none", ("expr", "va"), "needs buckets that name the expression class .* bucketed by 'none'"),
    (None, ("va",), "this data has no expression labels: leave it out"),
])
def test_balance_frames_that_cannot_balance_is_refused_by_the_plan(tmp_path, bucket_by, tasks, expected):
    # Refused when the job is planned: it used to be refused only once the model had been built.
    from trainer_data import write_dataset

    from trainer.common.errors import TrainingError
    from trainer.training import distribution
    from trainer.training.plan import plan_job

    write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=4, crop_size=16, tasks=tasks,
                  bucket_by=bucket_by)
    config = config_lib.TrainConfig(data=str(tmp_path), job_dir=str(tmp_path / "job"), task="multi",
                                    balance_frames=True, batch_size=2, seq_len=4)
    with pytest.raises(TrainingError, match=expected):
        plan_job(config, *distribution.make_strategy(config.strategy))
