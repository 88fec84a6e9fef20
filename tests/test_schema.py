"""The record schema round-trips through NumPy and tf.data, and dataset_info validates."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

import tfrecords_schema as schema
from tfrecords_schema import keys


def _clip(num_aus=3):
    n = 4
    bbox = np.array([[0.1, 0.2, 0.5, 0.6], [np.nan] * 4, [0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]])
    return schema.ClipRecord(
        example_id="train/vid_left/000005",
        dataset_name="abaw",
        media_id="vid_left",
        data_path="batch1/vid.mp4",
        frame_rate=30.0,
        bucket_index=2,
        images=[b"jpeg%d" % i for i in range(n)],
        frame_index=np.arange(5, 5 + n),
        timestamp_us=np.arange(n) * 33333,
        bbox=bbox,
        expression=[1, -1, 3, 0],
        valence_arousal=[[0.5, -0.5], [-5, -5], [0.1, 0.2], [0.0, 0.9]],
        action_units=np.arange(n * num_aus).reshape(n, num_aus) % 2,
    )


def test_encode_then_decode_numpy_round_trips_every_field():
    clip = _clip()
    back = schema.decode_clip(schema.encode_clip(clip))
    assert back.example_id == clip.example_id and back.media_id == "vid_left"
    assert back.images == clip.images
    np.testing.assert_array_equal(back.frame_index, [5, 6, 7, 8])
    np.testing.assert_array_equal(back.has_face, [True, False, True, True])
    np.testing.assert_allclose(back.bbox[0], clip.bbox[0])
    np.testing.assert_array_equal(back.expression, [1, -1, 3, 0])
    np.testing.assert_allclose(back.valence_arousal, clip.valence_arousal)
    np.testing.assert_array_equal(back.action_units, clip.action_units)


def test_encoding_is_byte_deterministic():
    assert schema.encode_clip(_clip()) == schema.encode_clip(_clip())


def test_tf_parser_matches_numpy_decoder():
    clip = _clip()
    parsed = schema.make_clip_parser(3)(tf.constant(schema.encode_clip(clip)))
    assert parsed["example_id"].numpy() == b"train/vid_left/000005"
    assert int(parsed["bucket"]) == 2
    np.testing.assert_array_equal(parsed["has_face"].numpy(), [True, False, True, True])
    np.testing.assert_allclose(parsed["bbox"].numpy()[1], [0, 0, 0, 0])
    np.testing.assert_allclose(parsed["bbox"].numpy()[2], clip.bbox[2])
    np.testing.assert_array_equal(parsed["action_units"].numpy(), clip.action_units)
    np.testing.assert_allclose(parsed["valence_arousal"].numpy(), clip.valence_arousal)


def test_parser_without_action_units_gives_empty_au_tensor():
    parsed = schema.make_clip_parser(0)(tf.constant(schema.encode_clip(_clip(num_aus=0))))
    assert parsed["action_units"].shape == (4, 0)


def _raw_clip(crop_size=4):
    pixels = np.arange(4 * crop_size * crop_size * 3, dtype=np.int64).reshape(4, crop_size, crop_size, 3) % 251
    return dataclasses.replace(_clip(), images=[p.astype(np.uint8).tobytes() for p in pixels],
                               image_format=schema.image_codec.CODEC_RAW), pixels.astype(np.uint8)


def test_raw_crops_round_trip_and_say_their_codec():
    clip, pixels = _raw_clip()
    serialized = schema.encode_clip(clip)
    example = tf.train.SequenceExample.FromString(serialized)
    assert example.context.feature[keys.IMAGE_FORMAT].bytes_list.value == [b"raw"]
    back = schema.decode_clip(serialized)
    assert back.image_format == "raw" and back.images == clip.images
    for image, expected in zip(back.images, pixels):
        np.testing.assert_array_equal(schema.image_codec.decode_crop(image, "raw", 4), expected)
        assert schema.image_codec.crop_shape(image, "raw") == (4, 4)
    assert schema.image_codec.crop_shape(b"x" * 47, "raw") == (0, 47)  # not a square of pixels: a wrong size
    with pytest.raises(ValueError, match="not 5x5x3"):
        schema.image_codec.decode_crop(back.images[0], "raw", 5)
    with pytest.raises(ValueError, match="unknown image codec 'png'; valid codecs: jpeg, raw"):
        dataclasses.replace(clip, image_format="png")


def test_the_parser_reads_the_codec_it_is_given_and_refuses_another():
    raw, _ = _raw_clip()
    parsed = schema.make_clip_parser(3, image_format="raw")(tf.constant(schema.encode_clip(raw)))
    assert parsed["image"].numpy().tolist() == raw.images
    with pytest.raises(tf.errors.InvalidArgumentError, match="not stored as jpeg"):
        schema.make_clip_parser(3)(tf.constant(schema.encode_clip(raw)))
    jpeg = schema.encode_clip(_clip())
    with pytest.raises(tf.errors.InvalidArgumentError, match="not stored as raw"):
        schema.make_clip_parser(3, image_format="raw")(tf.constant(jpeg))
    # A record of versions 1-3 has no image/format: JPEG.
    example = tf.train.SequenceExample.FromString(jpeg)
    del example.context.feature[keys.IMAGE_FORMAT]
    example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] = 3
    old = example.SerializeToString()
    assert schema.decode_clip(old).image_format == "jpeg"
    assert schema.make_clip_parser(3)(tf.constant(old))["image"].shape == (4,)


def test_dataset_info_records_the_codec_and_refuses_an_unknown_one():
    raw = _info_json()
    assert schema.DatasetInfo.from_json(json.dumps(raw)).codec == "jpeg"  # older conversions: JPEG
    raw["options"] = {"codec": "raw"}
    assert schema.DatasetInfo.from_json(json.dumps(raw)).codec == "raw"
    raw["options"] = {"codec": "png"}
    with pytest.raises(schema.DatasetInfoError, match="options.codec is 'png', not one of"):
        schema.DatasetInfo.from_json(json.dumps(raw))


def test_decoder_refuses_other_schema_version():
    example = tf.train.SequenceExample.FromString(schema.encode_clip(_clip()))
    example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        schema.decode_clip(example.SerializeToString())


def _info():
    split = schema.SplitInfo(
        num_clips=1,
        num_frames=4,
        bucket_clips={"Fear": 1},
        shards=[schema.ShardInfo("train/abaw-train-Fear.tfrecord-00000-of-00001", "Fear", 1, 4, 100)],
        accounting=schema.Accounting(5, 3, 1, {"beyond_video_end": 1}),
    )
    return schema.DatasetInfo(
        name="abaw", tasks=["expr"], label_names={"expression": ["Neutral", "Fear"]}, bucket_by="expression",
        bucket_names=["Neutral", "Fear"], crop_size=112, clip_length=4, splits={"train": split},
    )


def test_dataset_info_round_trips_through_json(tmp_path):
    schema.write_dataset_info(_info(), str(tmp_path))
    back = schema.read_dataset_info(str(tmp_path))
    assert back == _info()
    back.check()


def test_dataset_info_check_names_the_unbalanced_split():
    info = _info()
    info.splits["train"].accounting.written_frames_with_face = 2
    with pytest.raises(schema.DatasetInfoError, match="'train' does not add up"):
        info.check()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"schema_version": 0}), "schema version 0"),
        (json.dumps({"schema_version": schema.SCHEMA_VERSION, "name": "x"}), "missing or has malformed"),
    ],
)
def test_bad_dataset_info_gives_clear_error(tmp_path, text, message):
    (tmp_path / schema.DATASET_INFO_FILENAME).write_text(text)
    with pytest.raises(schema.DatasetInfoError, match=message):
        schema.read_dataset_info(str(tmp_path))


def _info_json(**changes) -> dict:
    raw = json.loads(_info().to_json())
    for path, value in changes.items():
        target = raw
        *parents, last = path.split("__")
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value
    return raw


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"splits": []}, "splits must be a JSON object"),
        ({"splits": {"train": "ab"}}, "splits.train must be a JSON object"),
        ({"crop_size": "big"}, "crop_size must be an integer >= 1"),
        ({"crop_size": True}, "crop_size must be an integer >= 1"),
        ({"clip_length": 0}, "clip_length must be an integer >= 1"),
        ({"name": 3}, "name must be a string"),
        ({"tasks": "expr"}, "tasks must be a list of strings"),
        ({"bucket_names": ["A", 2]}, r"bucket_names\[1\] must be a string"),
        ({"label_names": {"expression": "Neutral"}}, "label_names.expression must be a list of strings"),
        ({"options": []}, "options must be a JSON object"),
        ({"splits__train__shards": {"a": 1}}, "splits.train.shards must be a list"),
        ({"splits__train__shards__0": "x"}, r"splits.train.shards\[0\] must be a JSON object"),
        ({"splits__train__shards__0__num_records": "7"}, r"splits.train.shards\[0\].num_records must be an integer"),
        ({"splits__train__shards__0__num_bytes": -1}, r"shards\[0\].num_bytes must be an integer >= 0"),
        ({"splits__train__shards__0__bucket": 1}, r"shards\[0\].bucket must be a string"),
        ({"splits__train__num_clips": 1.5}, "splits.train.num_clips must be an integer"),
        ({"splits__train__bucket_clips": {"Fear": "1"}}, "splits.train.bucket_clips.Fear must be an integer"),
        ({"splits__train__class_frames": {"expr": []}}, "splits.train.class_frames.expr must be a JSON object"),
        ({"splits__train__accounting": [1, 2]}, "splits.train.accounting must be a JSON object"),
        ({"splits__train__accounting__dropped": {"x": None}}, "accounting.dropped.x must be an integer"),
        ({"splits__train__accounting__labelled": 1}, r"unknown fields \['labelled'\] in splits.train.accounting"),
        ({"splits__train__shards__0__extra": 1}, r"unknown fields \['extra'\] in splits.train.shards\[0\]"),
    ],
)
def test_mistyped_dataset_info_fields_are_a_dataset_info_error_naming_file_and_field(tmp_path, changes, field):
    (tmp_path / schema.DATASET_INFO_FILENAME).write_text(json.dumps(_info_json(**changes)))
    with pytest.raises(schema.DatasetInfoError, match=field) as caught:
        schema.read_dataset_info(str(tmp_path))
    assert str(tmp_path / schema.DATASET_INFO_FILENAME) in str(caught.value)


def test_shard_without_a_required_field_is_a_dataset_info_error():
    raw = _info_json()
    del raw["splits"]["train"]["shards"][0]["num_records"]
    with pytest.raises(schema.DatasetInfoError,
                       match=r"x.json .*shards\[0\] lacks required field\(s\) \['num_records'\]"):
        schema.DatasetInfo.from_json(json.dumps(raw), source="x.json")


def test_missing_dataset_info_says_what_data_must_be(tmp_path):
    with pytest.raises(schema.DatasetInfoError, match="output directory of beam_jobs.convert"):
        schema.read_dataset_info(str(tmp_path))


def test_shard_names_follow_tfds_pattern():
    assert schema.shard_basename("abaw", "train", "Fear", 3, 10) == "abaw-train-Fear.tfrecord-00003-of-00010"
    assert schema.shard_basename("abaw", "validation", None, 0, 1) == "abaw-validation.tfrecord-00000-of-00001"
    assert schema.bucket_token("va 1/2") == "va_1_2"


# --- Schema version 2: keypoints; version-1 clips still read. -------------------------------

def _keypoint_clip():
    """_clip() with 3 keypoints on the frames that have a face (frame 2 has none)."""
    clip = _clip()
    points = np.full((4, 3, 2), np.nan, np.float32)
    for row in (0, 2, 3):
        points[row] = [[0.2 + row / 10, 0.3], [0.4, 0.3 + row / 10], [0.3, 0.45]]
    return dataclasses.replace(clip, keypoints=points)


def _as_version_1(serialized: bytes) -> bytes:
    """A version-2 record as the version-1 writer made it: no keypoint lists, no image format, version 1."""
    example = tf.train.SequenceExample.FromString(serialized)
    for key in keys.POINT_KEYS:
        del example.feature_lists.feature_list[key]
    del example.context.feature[keys.IMAGE_FORMAT]
    example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] = 1
    return example.SerializeToString(deterministic=True)


def test_version_2_stores_keypoints_per_frame_empty_where_no_face():
    clip = _keypoint_clip()
    serialized = schema.encode_clip(clip)
    example = tf.train.SequenceExample.FromString(serialized)
    assert example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] == schema.SCHEMA_VERSION >= 2
    xs = [list(f.float_list.value) for f in example.feature_lists.feature_list[keys.POINT_X].feature]
    assert [len(x) for x in xs] == [3, 0, 3, 3]
    np.testing.assert_allclose(xs[2], clip.keypoints[2, :, 0])
    back = schema.decode_clip(serialized)
    np.testing.assert_allclose(back.keypoints, clip.keypoints)  # NaN rows compare equal.
    np.testing.assert_array_equal(back.has_keypoints, [True, False, True, True])


def test_clip_without_keypoints_keeps_working_and_stores_empty_point_lists():
    clip = _clip()  # No keypoints given: a [T, 0, 2] array.
    assert clip.keypoints.shape == (4, 0, 2) and not clip.has_keypoints.any()
    back = schema.decode_clip(schema.encode_clip(clip))
    assert back.keypoints.shape == (4, 0, 2)
    parsed = schema.make_clip_parser(3, num_keypoints=2)(tf.constant(schema.encode_clip(clip)))
    assert parsed["keypoints"].shape == (4, 2, 2) and np.isnan(parsed["keypoints"].numpy()).all()


def test_tf_parser_reads_keypoints_as_nan_padded_tensor():
    clip = _keypoint_clip()
    parsed = schema.make_clip_parser(3, num_keypoints=3)(tf.constant(schema.encode_clip(clip)))
    np.testing.assert_allclose(parsed["keypoints"].numpy(), clip.keypoints)
    assert "keypoints" not in schema.make_clip_parser(3)(tf.constant(schema.encode_clip(clip)))


def test_version_1_clip_reads_with_both_readers_without_keypoints():
    clip = _keypoint_clip()
    v1 = _as_version_1(schema.encode_clip(clip))
    back = schema.decode_clip(v1)
    assert back.keypoints.shape == (4, 0, 2) and back.images == clip.images
    np.testing.assert_array_equal(back.has_face, clip.has_face)
    np.testing.assert_allclose(back.bbox, clip.bbox)
    np.testing.assert_array_equal(back.action_units, clip.action_units)
    parsed = schema.make_clip_parser(3, num_keypoints=3)(tf.constant(v1))
    assert parsed["keypoints"].shape == (4, 3, 2) and np.isnan(parsed["keypoints"].numpy()).all()
    np.testing.assert_array_equal(parsed["has_face"].numpy(), clip.has_face)
    np.testing.assert_allclose(parsed["bbox"].numpy()[0], clip.bbox[0])
    np.testing.assert_array_equal(parsed["expression"].numpy(), clip.expression)


def test_tf_parser_refuses_unknown_schema_version():
    example = tf.train.SequenceExample.FromString(schema.encode_clip(_clip()))
    example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] = 99
    with pytest.raises(tf.errors.InvalidArgumentError, match="schema version"):
        schema.make_clip_parser(3)(tf.constant(example.SerializeToString()))


def test_keypoint_lists_of_different_lengths_are_refused():
    example = tf.train.SequenceExample.FromString(schema.encode_clip(_keypoint_clip()))
    for key in keys.POINT_KEYS:
        example.feature_lists.feature_list[key].feature[0].float_list.value.append(0.5)
    with pytest.raises(ValueError, match="keypoint lists of different lengths"):
        schema.decode_clip(example.SerializeToString())


def test_dataset_info_faces_block_round_trips_and_is_validated(tmp_path):
    info = _info()
    info.splits["train"].faces = {"detected": 2, "held": 1, "lost": 1, "none": 0}
    schema.write_dataset_info(info, str(tmp_path))
    assert schema.read_dataset_info(str(tmp_path)).splits["train"].faces == info.splits["train"].faces
    raw = json.loads(info.to_json())
    raw["splits"]["train"]["faces"]["held"] = -1
    with pytest.raises(schema.DatasetInfoError, match="splits.train.faces.held must be an integer >= 0"):
        schema.DatasetInfo.from_json(json.dumps(raw))


def test_version_1_dataset_info_still_reads_without_faces():
    raw = _info_json()
    raw["schema_version"] = 1
    del raw["splits"]["train"]["faces"]
    info = schema.DatasetInfo.from_json(json.dumps(raw))
    assert info.schema_version == 1 and info.splits["train"].faces == {}
    for version in (schema.SCHEMA_VERSION + 1, True):
        raw["schema_version"] = version
        with pytest.raises(schema.DatasetInfoError, match=f"schema version {version!r}"):
            schema.DatasetInfo.from_json(json.dumps(raw))
