"""The trainer's tf.data pipelines on tiny converted datasets written in the test."""

import collections
import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from trainer_data import corrupt_shard, shard_path, truncate_shard, write_dataset

from tfrecords_schema import HEADS, DatasetInfoError, decode_clip, keys, write_dataset_info
from tfrecords_schema.image_codec import JPEG_DCT_METHOD
from trainer.input import frames, records
from trainer.input import pipeline as trainer_input

SEQ_LEN = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    info = write_dataset(root, num_clips_per_class={"A": 4, "B": 3, "C": 2}, clip_length=12, short_clip_every=3,
                         crop_size=24, invalid_fraction=0.2, no_face_fraction=0.15, seed=1)
    return root, info


def _clips(root, info, split):
    clips = []
    for shard in info.splits[split].shards:
        for record in tf.data.TFRecordDataset(os.path.join(root, shard.path)):
            clips.append(decode_clip(record.numpy()))
    return clips


def _collect_eval(dataset):
    """{(example_id, frame_index): (image, targets, weights, has_face, media_id)} over the whole eval stream;
    counts repeats."""
    seen, counts = {}, collections.Counter()
    for images, targets, weights, ids in dataset:
        for b in range(images.shape[0]):
            example_id = ids["example_id"][b].numpy().decode()
            for t in range(images.shape[1]):
                frame = int(ids["frame_index"][b, t])
                if frame < 0:
                    assert all(float(w[b, t]) == 0.0 for w in weights.values())
                    assert not images[b, t].numpy().any() and not ids["has_face"][b, t]
                    continue
                counts[(example_id, frame)] += 1
                seen[(example_id, frame)] = (images[b, t].numpy(),
                                             {k: v[b, t].numpy() for k, v in targets.items()},
                                             {k: float(v[b, t]) for k, v in weights.items()},
                                             bool(ids["has_face"][b, t]), ids["media_id"][b].numpy().decode())
    return seen, counts


@pytest.mark.parametrize("task,heads", [("expr", ("expression",)), ("va", ("valence_arousal",)),
                                        ("au", ("action_units",)),
                                        ("multi", ("expression", "valence_arousal", "action_units"))])
def test_train_and_eval_elements_have_the_contract_shapes_and_dtypes(data, task, heads):
    root, info = data
    train = trainer_input.make_train_dataset(root, info, task=task, seq_len=SEQ_LEN, batch_size=3)
    evaluation = trainer_input.make_eval_dataset(root, info, task=task, seq_len=SEQ_LEN, batch_size=3)
    for images, targets, weights in (next(iter(train)), next(iter(evaluation))[:3]):
        # uint8 pixels: the model scales them (its Rescaling input layer).
        assert images.dtype == tf.uint8 and images.shape == (3, SEQ_LEN, 24, 24, 3)
        assert int(tf.reduce_max(images)) > 1  # 0..255, not [0, 1]
        assert tuple(targets) == heads and tuple(weights) == heads
        expected = {"expression": (tf.int32, (3, SEQ_LEN)), "valence_arousal": (tf.float32, (3, SEQ_LEN, 2)),
                    "action_units": (tf.float32, (3, SEQ_LEN, 4))}
        for head in heads:
            assert (targets[head].dtype, tuple(targets[head].shape)) == expected[head]
            assert weights[head].dtype == tf.float32 and tuple(weights[head].shape) == (3, SEQ_LEN)
    assert train.element_spec[0].shape == (3, SEQ_LEN, 24, 24, 3)  # fixed batch shape for training


def test_eval_covers_every_frame_exactly_once_with_masks_and_targets_from_the_records(data):
    root, info = data
    dataset = trainer_input.make_eval_dataset(root, info, task="multi", seq_len=SEQ_LEN, batch_size=4)
    seen, counts = _collect_eval(dataset)
    clips = _clips(root, info, "validation")
    expected_frames = {(c.example_id, int(f)) for c in clips for f in c.frame_index}
    assert set(counts) == expected_frames
    assert set(counts.values()) == {1}
    masked = collections.Counter()
    for clip in clips:
        for t, frame in enumerate(clip.frame_index):
            image, targets, weights, has_face, media_id = seen[(clip.example_id, int(frame))]
            face = bool(clip.has_face[t])
            assert has_face == face and media_id == clip.media_id
            expr_ok = clip.expression[t] != keys.EXPRESSION_INVALID
            va_ok = bool((clip.valence_arousal[t] != keys.VA_INVALID).all())
            au_ok = bool((clip.action_units[t] != keys.AU_INVALID).all())
            # Every labelled frame is scored, with or without a face (issue 7: as the benchmark does).
            assert weights == {"expression": float(expr_ok), "valence_arousal": float(va_ok),
                               "action_units": float(au_ok)}
            assert targets["expression"] == (clip.expression[t] if expr_ok else 0)
            np.testing.assert_allclose(targets["valence_arousal"], clip.valence_arousal[t] if va_ok else [0, 0])
            np.testing.assert_array_equal(targets["action_units"], clip.action_units[t] if au_ok else 0)
            # No augmentation in evaluation: the pixels are the decoded JPEG, uint8.
            np.testing.assert_array_equal(
                image, tf.io.decode_jpeg(clip.images[t], channels=3, dct_method=JPEG_DCT_METHOD).numpy())
            masked["no_face_scored"] += (not face) and expr_ok
            masked["invalid"] += not expr_ok
    assert masked["no_face_scored"] > 0 and masked["invalid"] > 0  # the data really exercises both cases


def test_eval_order_is_deterministic(data):
    root, info = data

    def ids():
        dataset = trainer_input.make_eval_dataset(root, info, task="expr", seq_len=SEQ_LEN, batch_size=5)
        return [(i["example_id"].numpy().tolist(), i["frame_index"].numpy().tolist()) for *_, i in dataset]

    assert ids() == ids()


def test_train_weights_mask_invalid_no_face_and_padding_only(tmp_path):
    # Clips of 5 and 3 frames, seq_len 8: frames past the clip end are padding.
    info = write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=5, short_clip_every=2,
                         crop_size=16, invalid_fraction=0.0, no_face_fraction=0.0, seed=2)
    dataset = trainer_input.make_train_dataset(str(tmp_path), info, task="multi", seq_len=SEQ_LEN, batch_size=4,
                                               seed=1)
    for images, _targets, weights in dataset.take(5):
        real = tf.reduce_any(images > 0, axis=[2, 3, 4]).numpy()  # padding frames are all-zero images
        for head in weights:
            np.testing.assert_array_equal(weights[head].numpy(), real.astype(np.float32))
        lengths = real.sum(axis=1)
        assert set(lengths.tolist()) <= {3, 5}
        assert all(real[b, : lengths[b]].all() for b in range(4))  # padding is a suffix


def test_training_weighs_frames_without_a_face_zero_and_evaluation_scores_them(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 3, "B": 3}, clip_length=8, short_clip_every=0,
                         crop_size=16, invalid_fraction=0.0, no_face_fraction=0.4, seed=3)
    train = trainer_input.make_train_dataset(str(tmp_path), info, task="expr", seq_len=8, batch_size=6, seed=2)
    grey = int(0.5 * 255)  # the flat crop trainer_data writes for a frame without a face
    no_face_seen = 0
    for images, _, weights in train.take(3):
        blank = (np.abs(images.numpy().astype(np.int32) - grey) < 5).all(axis=(2, 3, 4))
        no_face_seen += int(blank.sum())
        np.testing.assert_array_equal(weights["expression"].numpy(), (~blank).astype(np.float32))
    assert no_face_seen > 0
    evaluation = trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=8, batch_size=6)
    for _, _, weights, ids in evaluation:
        real = ids["frame_index"].numpy() >= 0
        np.testing.assert_array_equal(weights["expression"].numpy(), real.astype(np.float32))


def test_targets_and_weights_mask_each_reason_separately():
    window = {
        "image": tf.constant(["x"] * 4),
        "num_valid": tf.constant(3),  # frame 3 is padding
        "has_face": tf.constant([True, False, True, True]),
        "expression": tf.constant([2, 1, keys.EXPRESSION_INVALID, 0], tf.int64),
        "valence_arousal": tf.constant([[0.5, -0.5], [0.1, 0.1], [keys.VA_INVALID] * 2, [0.2, 0.2]]),
        "action_units": tf.constant([[1, 0], [0, 1], [0, 0], [keys.AU_INVALID] * 2], tf.int64),
    }
    targets, weights = frames.targets_and_weights(window, HEADS, 3, None, require_face=True)
    np.testing.assert_array_equal(weights["expression"], [1, 0, 0, 0])
    np.testing.assert_array_equal(weights["valence_arousal"], [1, 0, 0, 0])
    np.testing.assert_array_equal(weights["action_units"], [1, 0, 1, 0])
    _, scored = frames.targets_and_weights(window, HEADS, 3, None, require_face=False)
    np.testing.assert_array_equal(scored["expression"], [1, 1, 0, 0])  # the no-face frame counts
    np.testing.assert_array_equal(scored["valence_arousal"], [1, 1, 0, 0])
    np.testing.assert_array_equal(scored["action_units"], [1, 1, 1, 0])
    np.testing.assert_array_equal(targets["expression"], [2, 1, 0, 0])
    np.testing.assert_allclose(targets["valence_arousal"], [[0.5, -0.5], [0.1, 0.1], [0, 0], [0.2, 0.2]])
    np.testing.assert_array_equal(targets["action_units"], [[1, 0], [0, 1], [0, 0], [0, 0]])
    class_weights = np.array([0.5, 1.0, 2.0], np.float32)
    _, weighted = frames.targets_and_weights(window, ("expression",), 3, class_weights, require_face=True)
    np.testing.assert_array_equal(weighted["expression"], [2.0, 0, 0, 0])


def test_loss_weighting_multiplies_expression_weights_by_class_weights(data):
    root, info = data
    from trainer.input import sampling
    class_weights = sampling.class_loss_weights(info, "expression", "inverse")
    plain = trainer_input.make_train_dataset(root, info, task="expr", seq_len=SEQ_LEN, batch_size=6, seed=4)
    weighted = trainer_input.make_train_dataset(root, info, task="expr", seq_len=SEQ_LEN, batch_size=6, seed=4,
                                                loss_weighting="inverse")
    (_, t0, w0), (_, t1, w1) = next(iter(plain)), next(iter(weighted))
    np.testing.assert_array_equal(t0["expression"], t1["expression"])
    np.testing.assert_allclose(w1["expression"], w0["expression"] * class_weights[t0["expression"].numpy()])


def test_training_is_seeded_and_delivers_the_decoded_crops(data):
    root, info = data

    def first(seed):
        ds = trainer_input.make_train_dataset(root, info, task="expr", seq_len=SEQ_LEN, batch_size=4, seed=seed)
        images, targets, _ = next(iter(ds))
        return images.numpy(), targets["expression"].numpy()

    a, b = first(7), first(7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first(8)[0], a[0])
    # No augmentation here (it is the model's first layer): every frame is a stored crop, decoded, or padding.
    crops = {frame.tobytes() for clip in _clips(root, info, "train") for frame in
             (tf.io.decode_jpeg(jpeg, channels=3, dct_method=JPEG_DCT_METHOD).numpy() for jpeg in clip.images)}
    assert all(not frame.any() or frame.tobytes() in crops for frame in a[0].reshape(-1, 24, 24, 3))


def test_pipelines_shard_files_between_workers(data):
    root, info = data
    union = collections.Counter()
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        _, counts = _collect_eval(trainer_input.make_eval_dataset(
            root, info, task="expr", seq_len=SEQ_LEN, batch_size=4, input_context=context))
        assert counts and not set(counts) & set(union)
        union.update(counts)
        next(iter(trainer_input.make_train_dataset(root, info, task="expr", seq_len=SEQ_LEN, batch_size=2,
                                                   input_context=context)))
    assert len(union) == info.splits["validation"].num_frames and set(union.values()) == {1}


def test_fewer_eval_shards_than_workers_is_a_clear_error_and_train_streams_are_shared(data):
    root, info = data
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=2, num_replicas_in_sync=3)
    # Train streams with fewer shards than pipelines are read whole by every pipeline (see records.assign_shards).
    next(iter(trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=2, input_context=context)))
    with pytest.raises(ValueError, match=r"split 'validation' has 2 shard file\(s\) but there are 3"):
        trainer_input.make_eval_dataset(root, info, task="expr", seq_len=4, batch_size=2, input_context=context)


@pytest.fixture(scope="module")
def gappy(tmp_path_factory):
    """Three buckets of 4 shard files each, shards 1 and 3 empty (as --min_shards / hashing leave them)."""
    root = str(tmp_path_factory.mktemp("gappy"))
    info = write_dataset(root, num_clips_per_class={"A": 6, "B": 4, "C": 2}, clip_length=4, short_clip_every=0,
                         crop_size=16, tasks=("expr",), invalid_fraction=0.0, no_face_fraction=0.0,
                         num_shards_per_bucket=4, empty_shard_indices=(1, 3), num_validation_shards=0, seed=6)
    return root, info


@pytest.mark.parametrize("sampling", ["balanced", "downsample"])
def test_every_worker_gets_records_of_every_bucket_when_empty_shard_files_exist(gappy, sampling):
    root, info = gappy
    assert sum(s.num_records == 0 for s in info.splits["train"].shards) == 6
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=12,
                                                   sampling=sampling, seed=1, input_context=context)
        labels = np.concatenate([t["expression"][:, 0].numpy() for _, t, _ in dataset.take(4)])
        assert len(labels) == 48, (pipeline_id, sampling)  # the stream does not end
        shares = np.bincount(labels, minlength=3) / len(labels)
        assert (shares > 0.15).all(), (pipeline_id, sampling, shares)  # every bucket is in the mix


def test_bucket_with_fewer_non_empty_shards_than_workers_is_shared_by_them(tmp_path, caplog):
    root = str(tmp_path)
    info = write_dataset(root, num_clips_per_class={"A": 3, "B": 2}, clip_length=4, crop_size=16, tasks=("expr",),
                         num_shards_per_bucket=3, empty_shard_indices=(1, 2), num_validation_shards=0,
                         invalid_fraction=0.0, no_face_fraction=0.0, short_clip_every=0)
    caplog.set_level(logging.INFO, logger="trainer.input.records")
    for pipeline_id in range(2):  # each reads the one non-empty file of every bucket, in its own order
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=2, batch_size=10,
                                                   input_context=context)
        _, targets, _ = next(iter(dataset))
        assert set(targets["expression"][:, 0].numpy().tolist()) == {0, 1}
    assert "has 1 non-empty shard file(s) for 2 input pipelines: every pipeline reads all of them" in caplog.text


def test_corrupt_shard_fails_naming_the_file(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 3, "B": 3}, clip_length=4, crop_size=16, seed=4)
    bad = shard_path(tmp_path, info, "validation", 0)
    corrupt_shard(bad)  # same size: only reading finds it
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"corrupt or truncated shard.*" + os.path.basename(bad)):
        for _ in trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2):
            pass
    bad_train = shard_path(tmp_path, info, "train", 0, bucket="B")
    corrupt_shard(bad_train)
    train = trainer_input.make_train_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match=os.path.basename(bad_train)):
        for _ in train.take(50):
            pass


def test_truncated_or_missing_shard_fails_before_reading_naming_the_file(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=4, crop_size=16, seed=5)
    truncated = shard_path(tmp_path, info, "train", 1)
    truncate_shard(truncated)
    with pytest.raises(records.CorruptShardError, match=f"{truncated} .* bytes but dataset_info.json says"):
        trainer_input.make_train_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2)
    missing = shard_path(tmp_path, info, "validation", 1)
    os.remove(missing)
    with pytest.raises(records.CorruptShardError, match=f"{missing} .*does not exist"):
        trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2)


def test_skip_corrupt_goes_on_and_counts_the_lost_records(tmp_path, capfd):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 4, "B": 4}, clip_length=4, short_clip_every=0,
                         crop_size=16, seed=6)
    bad = shard_path(tmp_path, info, "validation", 0)
    corrupt_shard(bad)
    readable = sum(1 for _ in tf.data.TFRecordDataset(bad).ignore_errors())
    lost = info.splits["validation"].shards[0].num_records - readable
    assert lost > 0
    skipped = records.SkippedRecords()
    dataset = trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2,
                                              skipped=skipped)
    _, counts = _collect_eval(dataset)
    assert skipped.total == lost
    _collect_eval(dataset)  # counted per pass over the shard
    assert skipped.total == 2 * lost
    assert len(counts) == info.splits["validation"].num_frames - 4 * lost
    assert os.path.basename(bad) in capfd.readouterr().err


def test_missing_split_is_a_clear_error(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                         num_validation_shards=0)
    with pytest.raises(DatasetInfoError, match="no 'validation' split; it has: train"):
        trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2)
    del info.splits["train"]
    with pytest.raises(DatasetInfoError, match="no 'train' split"):
        trainer_input.make_train_dataset(str(tmp_path), info, task="expr", seq_len=4, batch_size=2)


def test_empty_bucket_is_skipped_with_a_warning_and_all_empty_is_an_error(tmp_path, caplog):
    info = write_dataset(tmp_path / "some", num_clips_per_class={"A": 2, "Empty": 0, "C": 2}, clip_length=4,
                         crop_size=16, invalid_fraction=0.0, no_face_fraction=0.0)
    caplog.set_level(logging.WARNING, logger="trainer.input.pipeline")
    dataset = trainer_input.make_train_dataset(str(tmp_path / "some"), info, task="expr", seq_len=2, batch_size=8)
    labels = np.concatenate([t["expression"].numpy().ravel() for _, t, _ in dataset.take(5)])
    assert set(labels.tolist()) == {0, 2}
    assert "1 train bucket(s) have no clips and are skipped: 'Empty'" in caplog.text
    none = write_dataset(tmp_path / "none", num_clips_per_class={"A": 0, "B": 0}, clip_length=4, crop_size=16,
                         num_validation_clips_per_class=1)
    with pytest.raises(ValueError, match="every train bucket is empty"):
        trainer_input.make_train_dataset(str(tmp_path / "none"), none, task="expr", seq_len=2, batch_size=2)


def test_task_without_labels_is_a_clear_error(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 1, "B": 1}, clip_length=4, crop_size=16,
                         tasks=("expr",))
    with pytest.raises(ValueError, match="no labels for task 'va'; it has labels for: expr"):
        trainer_input.make_train_dataset(str(tmp_path), info, task="va", seq_len=4, batch_size=2)
    with pytest.raises(ValueError, match="no labels for task 'au'"):
        trainer_input.make_eval_dataset(str(tmp_path), info, task="au", seq_len=4, batch_size=2)
    assert trainer_input.heads_for_task(info, "multi") == ("expression",)
    with pytest.raises(ValueError, match="valid values: expr, va, au, multi"):
        trainer_input.heads_for_task(info, "pose")


def test_unknown_sampling_option_lists_the_valid_values(data):
    root, info = data
    with pytest.raises(ValueError, match="valid values: natural, balanced, sqrt, downsample"):
        trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=2, sampling="uniform")
    with pytest.raises(ValueError, match="valid values: none, inverse, sqrt"):
        trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=2, loss_weighting="x")


def test_unbucketed_train_split_is_one_stream(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=4, crop_size=16,
                         tasks=("va",))
    for shard in info.splits["train"].shards:  # as a --bucket_by none conversion writes it
        shard.bucket = None
    info.bucket_names, info.splits["train"].bucket_clips = [], {}
    write_dataset_info(info, str(tmp_path))
    dataset = trainer_input.make_train_dataset(str(tmp_path), info, task="va", seq_len=4, batch_size=2,
                                               sampling="natural")
    images, targets, _ = next(iter(dataset))
    assert tuple(targets) == ("valence_arousal",) and images.shape[0] == 2


def test_filesystem_registration_rejects_unknown_schemes_and_leaves_local_paths_alone(tmp_path):
    from tfrecords_schema import filesystems
    filesystems.register_filesystems(str(tmp_path), None, "gs://bucket/data")  # TensorFlow's own: no-op
    assert not filesystems.tfio_used()
    assert filesystems.exit_hard_if_needed(3) == 3  # no tensorflow-io file system: a normal return
    with pytest.raises(ValueError, match="unsupported URL scheme 'ftp'.*s3://"):
        filesystems.register_filesystems("ftp://host/data")


def test_eval_of_a_dataset_without_action_units_covers_every_frame(tmp_path):
    # Regression: zero-width AU tensors inside the eval windows crashed TF 2.17 with a segmentation fault.
    info = write_dataset(str(tmp_path), tasks=("expr",), num_action_units=0)
    assert info.num_action_units == 0
    dataset = trainer_input.make_eval_dataset(str(tmp_path), info, task="expr", seq_len=SEQ_LEN, batch_size=4)
    _, counts = _collect_eval(dataset)
    clips = _clips(str(tmp_path), info, "validation")
    assert set(counts) == {(c.example_id, int(f)) for c in clips for f in c.frame_index}
    assert set(counts.values()) == {1}


def test_raw_crops_give_the_streams_of_their_jpegs(data, tmp_path):
    """A raw conversion holding the pixels the JPEG one decodes to: both streams deliver the same batches."""
    root, info = data
    raw_info = write_dataset(tmp_path, num_clips_per_class={"A": 4, "B": 3, "C": 2}, clip_length=12,
                             short_clip_every=3, crop_size=24, invalid_fraction=0.2, no_face_fraction=0.15, seed=1,
                             codec="raw")
    assert raw_info.codec == "raw" and info.codec == "jpeg"
    shard = tf.data.TFRecordDataset(shard_path(tmp_path, raw_info, "train"))
    assert {len(image) for record in shard for image in decode_clip(record.numpy()).images} == {24 * 24 * 3}

    def first(folder, dataset_info, windows_per_clip, batches=3):
        ds = trainer_input.make_train_dataset(folder, dataset_info, task="multi", seq_len=SEQ_LEN, batch_size=4,
                                              seed=3, windows_per_clip=windows_per_clip)
        return [(images.numpy(), targets) for images, targets, _ in ds.take(batches)]

    # One window decoded per clip; three, every crop of a clip decoded once for its windows (24 frames of windows
    # from clips of at most 12: JPEG ones too). test_several_windows_per_clip... covers windows decoding their own.
    for windows_per_clip in (1, 3):
        for (a, ta), (b, tb) in zip(first(root, info, windows_per_clip), first(str(tmp_path), raw_info,
                                                                                windows_per_clip)):
            np.testing.assert_array_equal(a, b)
            for head in ta:
                np.testing.assert_array_equal(ta[head], tb[head])
    jpeg_eval, _ = _collect_eval(trainer_input.make_eval_dataset(root, info, task="expr", seq_len=SEQ_LEN,
                                                                 batch_size=4))
    raw_eval, counts = _collect_eval(trainer_input.make_eval_dataset(str(tmp_path), raw_info, task="expr",
                                                                     seq_len=SEQ_LEN, batch_size=4))
    assert sorted(raw_eval) == sorted(jpeg_eval) and set(counts.values()) == {1}
    assert all(np.array_equal(raw_eval[k][0], jpeg_eval[k][0]) for k in jpeg_eval)


def test_a_raw_crop_of_the_wrong_size_fails_the_stream_naming_the_sizes(tmp_path):
    info = write_dataset(tmp_path, num_clips_per_class={"A": 2, "B": 2}, clip_length=4, short_clip_every=0,
                         crop_size=16, seed=2, codec="raw")
    wrong = dataclasses.replace(info, crop_size=17)
    with pytest.raises(tf.errors.InvalidArgumentError, match="raw crops must be 17x17x3 = 867 bytes"):
        next(iter(trainer_input.make_eval_dataset(str(tmp_path), wrong, task="expr", seq_len=4, batch_size=2)))


@pytest.mark.parametrize("windows_per_clip", [2, 3])  # 8 frames of windows (each decodes its own JPEGs) or 12
def test_several_windows_per_clip_are_windows_of_the_clips_read(data, windows_per_clip):
    """Repeated sampling: every window a window of a clip read (its own offset and stride), the labels-only stream
    the same windows; batch_size clips give windows_per_clip batches in a row (the raw stream gives the JPEG one's
    pixels: test_raw_crops_give_the_streams_of_their_jpegs)."""
    root, info = data
    clips = {c.example_id: c for c in _clips(root, info, "train")}
    dataset = trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=6, seed=5,
                                               windows_per_clip=windows_per_clip)
    shard_sets = records.train_shard_sets(root, info, trainer_input.train_bucket_draw(info, "balanced", "expr"),
                                          None, None)
    labels = records.explicitly_seeded(lambda worker: trainer_input.train_batches(
        info, shard_sets, heads=("expression",), seq_len=4, batch_size=6,
        draw=trainer_input.train_bucket_draw(info, "balanced", "expr"), class_weights=None, seed=5, decode=False,
        input_context=None, skipped=None, worker=worker, windows_per_clip=windows_per_clip))
    seen, batch_clips = collections.Counter(), []
    for (images, targets, _), (label_targets, _, window) in zip(dataset.take(6), labels.take(6)):
        np.testing.assert_array_equal(targets["expression"], label_targets["expression"])
        batch_clips.append(list(window["example_id"].numpy()))
        for b in range(6):
            clip = clips[window["example_id"][b].numpy().decode()]
            seen[clip.example_id] += 1
            for t, frame in enumerate(window["frame_index"][b].numpy()):
                if frame < 0:
                    assert not images[b, t].numpy().any()
                    continue
                row = list(clip.frame_index).index(frame)
                np.testing.assert_array_equal(
                    images[b, t], tf.io.decode_jpeg(clip.images[row], channels=3, dct_method=JPEG_DCT_METHOD))
    assert max(seen.values()) >= 2  # a clip read once gave several windows
    # Batches gK ... gK + K - 1 hold the 1st ... K-th windows of the same 6 clips, in the same order.
    for g in range(0, 6, windows_per_clip):
        assert all(batch_clips[g + k] == batch_clips[g] for k in range(windows_per_clip))
    assert batch_clips[0] != batch_clips[windows_per_clip]
    with pytest.raises(ValueError, match="windows_per_clip must be >= 1"):
        trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=6, windows_per_clip=0)
