"""The face stage inside the conversion: keypoints stored, face counts reported, frames that do not decode.

Real faces only where the detector must find them (scikit-image's public-domain astronaut portrait, warped
into each frame by ``real_face_scenes``); the rest uses the drawn faces of ``video_fixtures``.
"""

from __future__ import annotations

import contextlib
import io
import json

import abaw_layout as abaw
import conversion_fixtures as cf
import cv2
import numpy as np
import pytest
import real_face_scenes as scenes
import tensorflow as tf
import video_fixtures as vf
from skimage import data

from beam_jobs import convert
from beam_jobs.faces import stage as faces
from beam_jobs.pipeline import frame_sources
from beam_jobs.pipeline.clips import ClipBuilder
from tfrecords_schema import SCHEMA_VERSION, decode_clip, keys, read_dataset_info

W, H = 240, 180
FACE_FRAMES, EMPTY_FRAMES, CORRUPT = 10, 4, 6  # Frames 1-10 the astronaut, 11-14 a coffee cup; frame 6 broken.


def _builder(expression, clip_length=4):
    cfg = cf.config("/unused", clip_length=clip_length)
    return ClipBuilder(cf.track("train", "v"), cf.labels(expression), clip_length, "abaw", 10.0, cfg.bucketer())


def test_clip_builder_leaves_a_skipped_frame_out_without_shifting_the_others():
    builder = _builder([4] * 8)
    assert builder.add(1, 0, cf.JPEG, None) is None and builder.add(2, 1, cf.JPEG, None) is None
    assert builder.skip(3) is None
    clip = builder.add(4, 3, cf.JPEG, None)
    assert clip.frame_index.tolist() == [1, 2, 4] and clip.timestamp_us.tolist() == [0, 1, 3]
    for index in (5, 6, 7):
        builder.add(index, index, cf.JPEG, None)
    assert builder.skip(8).frame_index.tolist() == [5, 6, 7]  # A skipped last frame completes its clip.
    with pytest.raises(ValueError, match="frame 11 does not follow frame 9"):
        builder.add(9, 9, cf.JPEG, None)
        builder.add(11, 11, cf.JPEG, None)


def test_clip_builder_stores_keypoints_with_nan_rows_where_a_frame_has_none():
    builder = _builder([4, 4, 4, 4])
    points = np.array([[0.4, 0.3], [0.6, 0.3], [0.5, 0.5]], np.float32)
    for index, kp in ((1, points), (2, None), (3, points + 0.01)):
        builder.add(index, index, cf.JPEG, (0.1, 0.2, 0.8, 0.7) if kp is not None else None, kp)
    clip = builder.add(4, 4, cf.JPEG, None)
    assert clip.keypoints.shape == (4, 3, 2)
    np.testing.assert_allclose(clip.keypoints[2], points + 0.01)
    assert np.isnan(clip.keypoints[[1, 3]]).all() and clip.has_keypoints.tolist() == [True, False, True, False]
    without = _builder([4, 4])
    without.add(1, 0, cf.JPEG, (0.1, 0.2, 0.8, 0.7))
    assert without.add(2, 1, cf.JPEG, None) is None and without.flush().keypoints.shape == (2, 0, 2)


def test_provided_crops_stop_at_the_last_decodable_frame_of_the_video(tmp_path):
    video = vf.write_face_video(tmp_path / "v.avi", [4] * 6)
    crops = cf.write_crops(tmp_path / "crops", {i: None for i in range(1, 9)})
    face = faces.FaceStageConfig(crop_size=16)
    track = cf.track("train", "v", media_path=str(video), crops_dir=str(crops))
    source = frame_sources.open_frame_source(track, cf.labels([4] * 8), face, 4, "abaw",
                                             cf.config("/unused").bucketer())
    clips = [item.clip for item in source]
    assert [c.frame_index.tolist() for c in clips] == [[1, 2, 3, 4], [5, 6]]
    assert source.frames_read == 6 and clips[0].frame_rate == pytest.approx(vf.FPS)


def test_decoded_video_reports_a_corrupt_frame_in_place_and_goes_on(tmp_path):
    video = vf.corrupt_mjpeg_frames(vf.write_face_video(tmp_path / "v.avi", [4] * 8), [3])
    face = faces.FaceStageConfig(crop_size=16, detect_every=1)
    track = cf.track("train", "v", media_path=str(video), data_path="v.avi")
    source = frame_sources.open_frame_source(track, cf.labels([4] * 8), face, 4, "abaw",
                                             cf.config("/unused").bucketer())
    items = list(source)
    assert [i.undecodable for i in items if i.undecodable] == [3]
    clips = [i for i in items if i.clip is not None]
    assert [i.clip.frame_index.tolist() for i in clips] == [[1, 2, 4], [5, 6, 7, 8]]
    assert [sum(i.faces.values()) for i in clips] == [3, 4] and set(clips[0].faces) == set(faces.FACE_STATUSES)
    assert source.frames_read == 8


def _scene_video(path):
    """The astronaut (a slow pan) for FACE_FRAMES frames, then a face-free picture, as MJPG."""
    frames = [scenes.place_astronaut(W, H, 0.33 * W, (0.4 * W + 3 * t, H / 2)).image for t in range(FACE_FRAMES)]
    coffee = cv2.resize(np.ascontiguousarray(data.coffee()[:, :, ::-1]), (W, H))
    frames += [coffee] * EMPTY_FRAMES
    return vf.write_container_video(path, frames)


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    video = vf.corrupt_mjpeg_frames(_scene_video(root / "videos" / "astro.avi"), [CORRUPT])
    n = FACE_FRAMES + EMPTY_FRAMES
    abaw.write_annotation(root / "ann", "expr", "train", "astro", [4] * n)
    out = root / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(["--videos", str(video.parent), "--annotations", str(root / "ann"), "--output", str(out),
                          "--clip_length", "4", "--detector", "blazeface", "--align", "on", "--detect_every", "2",
                          "--bucket_by", "none", "--runner", "DirectRunner", "--direct_running_mode", "in_memory",
                          "--progress_every", "0"])
    assert rc == 0
    examples = [tf.train.SequenceExample.FromString(r.numpy())
                for shard in sorted((out / "train").iterdir()) for r in tf.data.TFRecordDataset(str(shard))]
    return {"out": out, "info": read_dataset_info(str(out)), "examples": examples,
            "clips": [decode_clip(e.SerializeToString()) for e in examples]}


def test_a_frame_that_does_not_decode_is_dropped_as_decode_error_and_nothing_shifts(scene_run):
    acc = scene_run["info"].splits["train"].accounting
    n = FACE_FRAMES + EMPTY_FRAMES
    assert (acc.labelled_frames, acc.written_frames, acc.dropped) == (n, n - 1, {"decode_error": 1})
    indices = [i for clip in scene_run["clips"] for i in clip.frame_index.tolist()]
    assert sorted(indices) == [i for i in range(1, n + 1) if i != CORRUPT]
    clip = next(c for c in scene_run["clips"] if CORRUPT + 1 in c.frame_index)
    assert clip.timestamp_us[clip.frame_index.tolist().index(CORRUPT + 1)] == round(CORRUPT * 1e6 / vf.FPS)
    letters = [json.loads(line) for line in (scene_run["out"] / "errors" / "dead_letters.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["frames"]) for d in letters] == [("decode_error", 1)]
    assert f"({CORRUPT})" in letters[0]["message"]


def test_keypoints_are_stored_per_frame_on_faces_and_empty_without(scene_run):
    by_frame = {}
    for example, clip in zip(scene_run["examples"], scene_run["clips"]):
        assert example.context.feature[keys.SCHEMA_VERSION].int64_list.value[0] == SCHEMA_VERSION >= 2
        xs = example.feature_lists.feature_list[keys.POINT_X].feature
        for i, frame in enumerate(clip.frame_index.tolist()):
            by_frame[frame] = (clip.has_face[i], len(xs[i].float_list.value), clip.keypoints[i], clip.bbox[i])
    for frame in range(1, FACE_FRAMES + 1):
        if frame == CORRUPT:
            continue
        has_face, count, points, box = by_frame[frame]
        assert has_face and count == 6  # BlazeFace: eyes, nose, mouth, ears.
        ymin, xmin, _, xmax = box
        eyes = points[:2]
        assert (xmin <= eyes[:, 0]).all() and (eyes[:, 0] <= xmax).all() and (ymin <= eyes[:, 1]).all()
    for frame in range(FACE_FRAMES + 1, FACE_FRAMES + EMPTY_FRAMES + 1):
        has_face, count, points, _ = by_frame[frame]
        assert not has_face and count == 0 and np.isnan(points).all()


def test_face_counts_are_reported_and_match_the_accounting(scene_run):
    split = scene_run["info"].splits["train"]
    counts, acc = split.faces, split.accounting
    assert set(counts) == set(faces.FACE_STATUSES)
    assert counts["detected"] + counts["held"] == acc.written_frames_with_face == FACE_FRAMES - 1
    assert counts["lost"] + counts["none"] == acc.written_frames_without_face == EMPTY_FRAMES
    assert counts["detected"] >= 4 and counts["lost"] == EMPTY_FRAMES  # The face was seen before the cut.
    assert scene_run["info"].options["align"] is True and scene_run["info"].options["detector"] == "blazeface"


def test_align_and_redetect_flags_reach_the_face_stage(capsys):
    parse = convert.build_parser().parse_known_args
    args, _ = parse(["--output", "o", "--align", "OFF", "--redetect_change", "off"])
    stage = faces.FaceStageConfig.from_dict(vars(args))
    assert (stage.align, stage.redetect_change) == (False, None)
    args, _ = parse(["--output", "o", "--redetect_change", "0.2"])
    assert faces.FaceStageConfig.from_dict(vars(args)) == faces.FaceStageConfig(redetect_change=0.2)
    for bad in (["--align", "maybe"], ["--redetect_change", "2"]):
        with pytest.raises(SystemExit):
            parse(["--output", "o", *bad])
    assert "expected" in capsys.readouterr().err


def test_near_input_flag_reaches_the_face_stage_and_is_checked(capsys):
    parse = convert.build_parser().parse_known_args
    args, _ = parse(["--output", "o"])
    assert faces.FaceStageConfig.from_dict(vars(args)).near_input == 128  # The default: the model's own input.
    args, _ = parse(["--output", "o", "--near_input", "96"])
    assert faces.FaceStageConfig.from_dict(vars(args)) == faces.FaceStageConfig(near_input=96)
    assert "--near_input" in convert.build_parser().format_help()
    for bad in ("100", "0"):
        args, _ = parse(["--output", "o", "--near_input", bad])
        with pytest.raises(convert.UsageError, match=f"--near_input must be a positive multiple of 16 .*got {bad}"):
            convert.check_options(args)
