"""Serve what was trained: the crops `affectstream predict` feeds a model are byte for byte the crops its records hold.

* Through the face stage: the conversion follows every frame of a video, also those it does not write, so a frame's
  crop depends on the video alone; predict cuts the same bytes. The video here has everything that used to make the
  two differ: an unlabelled stretch of whole clips, a shot cut, a face that leaves the picture and a frame that does
  not decode.
* Provided crops: ``predict --cropped_aligned`` prepares each crop as ``convert --cropped_aligned`` does; missing and
  unreadable crops are frames without a face, crops past the video's end are counted, not predicted.
* Raw crops (``convert --codec raw``): the same guarantees, the crops served as the records hold them (uint8 RGB
  pixels), and the export records the codec (``model_info.json["crops"]["codec"]``).
* The export knows where its crops came from: ``model_info.json["crops"]``; predict refuses (exit 2, nothing
  written) to serve a provided-crops model without its crops unless asked to run the face stage anyway, and says so
  when the crops differ from training; crops folders and videos must match.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import shutil

import abaw_layout as abaw
import cv2
import numpy as np
import pytest
import tensorflow as tf
import video_fixtures as vf

from affectstream.synthetic_faces import FaceSpec, render_frame, write_video
from beam_jobs import convert
from beam_jobs.faces.stage import FaceStageConfig
from tfrecords_schema import decode_clip, read_dataset_info
from tfrecords_schema.image_codec import decode_crop
from trainer import train
from trainer.evaluation import evaluate
from trainer.prediction import predict
from trainer.prediction.crops import FaceStageCrops, ProvidedCrops, crop_counts

COMMON = ["--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"]
H, W = 120, 160
CLIP = 8


def _convert(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = convert.run(argv + COMMON)
    assert rc == 0, err.getvalue()


def _record_crops(output: pathlib.Path, codec: str = "jpeg") -> dict[tuple[str, int], tuple[bytes, bool]]:
    """``{(media_id, frame index): (stored crop, has_face)}`` of every frame the records hold (all of ``codec``)."""
    crops = {}
    for path in output.rglob("*.tfrecord-*"):
        for serialized in tf.data.TFRecordDataset(str(path)):
            clip = decode_clip(serialized.numpy())
            assert clip.image_format == codec
            for index, crop, face in zip(clip.frame_index.tolist(), clip.images, clip.has_face.tolist()):
                crops[(clip.media_id, index)] = (crop, face)
    return crops


def _hostile_frames(n: int = 96):
    """A face drifting through an unlabelled stretch, a shot cut at frame 57, the face gone for frames 65-70."""
    for i in range(1, n + 1):
        if i < 57:
            spec, background = FaceSpec(cx=55 + 0.9 * i, cy=62 + 4 * np.sin(i / 6), size=74, expression=i // 12 % 8), \
                (90, 120, 80)
        else:
            spec, background = FaceSpec(cx=110 - 0.5 * (i - 57), cy=58, size=66, expression=4), (40, 60, 150)
        yield render_frame(H, W, [] if 65 <= i <= 70 else [spec], background=background, noise_seed=i)


@pytest.fixture(scope="module", params=["jpeg", "raw"])
def hostile(request, tmp_path_factory):
    """The hostile video converted with a detection every 7 frames (a schedule that does not follow the clips), with
    JPEG crops and with raw ones."""
    root = tmp_path_factory.mktemp("hostile")
    video = root / "videos" / "hostile.avi"
    video.parent.mkdir(parents=True)
    write_video(str(video), _hostile_frames(), fps=10)
    vf.corrupt_mjpeg_frames(video, [75])
    labels = [i // 12 % 8 for i in range(96)]
    labels[20:40] = [-1] * 20  # Frames 21-40 unlabelled: the clips of frames 25-32 and 33-40 are not written.
    abaw.write_annotation(root / "annotations", "expr", "train", "hostile", labels)
    stage = ["--detect_every", "7", "--crop_size", "48", "--clip_length", str(CLIP), "--codec", request.param]
    _convert(["--videos", str(root / "videos"), "--annotations", str(root / "annotations"), "--output",
              str(root / "out"), *stage])
    info = read_dataset_info(str(root / "out"))
    return {"video": video, "records": _record_crops(root / "out", request.param), "codec": request.param,
            "face_stage": FaceStageConfig.from_dict({**info.options, "crop_size": info.crop_size})}


def test_conversion_and_predict_cut_the_same_crop_for_every_labelled_frame(hostile):
    assert hostile["face_stage"] == FaceStageConfig(detect_every=7, crop_size=48, codec=hostile["codec"])
    served = {c.index: c for c in FaceStageCrops(str(hostile["video"]), hostile["face_stage"], None)}
    records = {index: value for (media, index), value in hostile["records"].items() if media == "hostile"}
    # The video is as hostile as intended: whole clips not written, a frame that does not decode, no face for a while.
    assert not any(25 <= i <= 40 for i in records) and 75 not in records and not served[75].decoded
    assert not any(served[i].bbox for i in range(66, 71)) and all(served[i].bbox for i in (41, 56, 57, 90))
    assert len(records) == 96 - 16 - 1
    different = [i for i, (crop, face) in sorted(records.items())
                 if crop != served[i].crop or face != (served[i].bbox is not None)]
    assert different == []
    if hostile["codec"] == "raw":  # the pixels themselves, RGB, 48 x 48 x 3 bytes each
        assert {len(crop) for crop, _ in records.values()} == {48 * 48 * 3}
        jpeg = FaceStageCrops(str(hostile["video"]), FaceStageConfig(detect_every=7, crop_size=48), None)
        first = next(iter(jpeg))  # the same face stage's JPEG of frame 1 decodes to nearly these pixels, in RGB
        pixels = decode_crop(records[1][0], "raw", 48).astype(int)
        error = np.abs(decode_crop(first.crop, "jpeg", 48) - pixels).mean(axis=(0, 1))
        swapped = np.abs(decode_crop(first.crop, "jpeg", 48) - pixels[..., ::-1]).mean(axis=(0, 1))
        assert first.index == 1 and error.max() < 5 and swapped[[0, 2]].min() > 2 * error.max()


# --------------------------------------------------------------------------------------------------
# Provided crops.


def _crops_dataset(root: pathlib.Path) -> dict:
    """Two subjects of one video, each with crops: c_left (train), c_right (validation); 12 frames, 14 lines."""
    video = vf.write_face_video(root / "videos" / "c.avi", [4] * 12)
    for side, split in (("left", "train"), ("right", "validation")):
        abaw.write_annotation(root / "annotations", "expr", split, f"c_{side}", [4, 4, 4, 1, 1, 1, 4, 4, 4, 1, 1, 1,
                                                                                 4, 4])
        folder = abaw.write_crops_dir(root / "crops", f"c_{side}")
        for i in [*range(1, 13), 13, 14]:
            if i != 5:  # 00005.jpg is missing.
                cv2.imwrite(str(folder / f"{i:05d}.jpg"), vf.face_frame(4 if i % 2 else 1, seed=i)[8:112, 28:132])
        (folder / "00003.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    return {"video": video, "crops": root / "crops", "annotations": root / "annotations"}


@pytest.fixture(scope="module", params=["jpeg", "raw"])
def provided(request, tmp_path_factory):
    """The provided-crops dataset converted (crop size 32; JPEG and raw crops), and a model trained on it for two
    steps."""
    root = tmp_path_factory.mktemp("provided")
    made = _crops_dataset(root)
    records = root / "records"
    _convert(["--cropped_aligned", str(made["crops"]), "--videos", str(root / "videos"), "--annotations",
              str(made["annotations"]), "--output", str(records), "--crop_size", "32", "--clip_length", "4",
              "--codec", request.param])
    job = root / "job"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert train.run(["--data", str(records), "--job_dir", str(job), "--task", "expr", "--epochs", "1",
                          "--steps_per_epoch", "2", "--batch_size", "2", "--seq_len", "2", "--cnn_width", "0.25",
                          "--rnn_units", "4", "--log_every", "100"]) == 0
    return {**made, "records": records, "export": job / "export", "codec": request.param}


def test_predict_prepares_provided_crops_as_the_conversion_does(provided):
    records = _record_crops(provided["records"], provided["codec"])
    for side in ("left", "right"):
        served = ProvidedCrops(str(provided["video"]), str(provided["crops"] / f"c_{side}"), 32, 90,
                               provided["codec"])
        by_index = {c.index: c for c in served}
        mine = {i: v for (media, i), v in records.items() if media == f"c_{side}"}
        assert sorted(mine) == list(range(1, 13)) == sorted(by_index)  # 14 lines, 12 frames: 2 beyond the end
        assert all(crop == by_index[i].crop and face == (by_index[i].bbox is not None)
                   for i, (crop, face) in mine.items())
        assert [i for i, c in by_index.items() if c.bbox is None] == [3, 5]  # unreadable, missing
        assert (served.missing, served.unreadable, served.past_video_end) == (1, 1, 2)


def test_provided_crops_are_served_where_the_video_frame_does_not_decode(tmp_path):
    # The conversion writes a provided crop whatever the video's frame does (the video gives times and the length
    # only), and evaluate scores it; predict marked such a frame not decoded, and its scoring left it out.
    video = vf.corrupt_mjpeg_frames(vf.write_face_video(tmp_path / "v.avi", [4] * 6), [3])
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(1, 7):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), vf.face_frame(4, seed=i)[8:112, 28:132])
    source = ProvidedCrops(str(video), str(folder), 32, 90)
    served = list(source)
    assert [c.index for c in served] == [1, 2, 3, 4, 5, 6] and all(c.decoded for c in served)
    assert crop_counts(source)["video_frames_not_decoded"] == 1  # said in the summary all the same
    assert all(c.bbox is not None for c in served)


def test_the_export_records_its_provided_crops(provided):
    info = json.loads((provided["export"] / "model_info.json").read_text())
    assert info["crops"]["source"] == "provided" and info["crops"]["crop_size"] == 32
    assert info["crops"]["codec"] == provided["codec"]
    assert "face_stage" not in info  # a face stage that never made its crops would be served by mistake


def test_evaluate_scores_a_provided_crops_export_on_its_conversion_without_a_face_stage_warning(provided, tmp_path,
                                                                                                 capsys):
    report = tmp_path / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert evaluate.run(["--model", str(provided["export"]), "--data", str(provided["records"]),
                             "--report_dir", str(report)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert json.loads((report / "metrics.json").read_text())["face_stage_differs"] == {}


def _predict(*args) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = predict.run([*map(str, args), "--progress_every", "0"])
    return code, out.getvalue() + err.getvalue()


def test_predict_with_cropped_aligned_gives_every_frame_its_row_and_counts_what_is_missing(provided, tmp_path):
    out = tmp_path / "pred"
    code, _ = _predict("--model", provided["export"], "--videos", provided["video"], "--output", out,
                       "--cropped_aligned", provided["crops"])
    assert code == 0
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert summary["crops"] == {"source": "provided", "trained_on": "provided", "matches_training": True}
    for side in ("left", "right"):
        rows = (out / f"c_{side}.csv").read_text().splitlines()[1:]
        assert [r.split(",")[3] for r in rows] == ["0" if i in (3, 5) else "1" for i in range(1, 13)]  # has_face
        assert len((out / "EXPR" / f"c_{side}.txt").read_text().splitlines()) == 13
    videos = {v["stem"]: v for v in summary["videos"]}
    assert {k: videos["c_left"][k] for k in ("crops_missing", "crops_unreadable", "crops_past_video_end")} == {
        "crops_missing": 1, "crops_unreadable": 1, "crops_past_video_end": 2}


def test_a_provided_crops_export_is_not_served_through_the_detector_unless_asked(provided, tmp_path):
    out = tmp_path / "pred"
    code, text = _predict("--model", provided["export"], "--videos", provided["video"], "--output", out)
    assert code == 2 and "--cropped_aligned" in text and not out.exists()
    assert len([line for line in text.splitlines() if line.startswith("error")]) == 1
    code, text = _predict("--model", provided["export"], "--videos", provided["video"], "--output", out,
                          "--detect_faces")
    assert code == 0 and "differ from the model's training crops" in text
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert summary["crops"] == {"source": "face_stage", "trained_on": "provided", "matches_training": False}


def test_crops_folders_and_videos_must_match(provided, tmp_path):
    other = vf.write_face_video(tmp_path / "other.avi", [4] * 3)
    out = tmp_path / "pred"
    code, text = _predict("--model", provided["export"], "--videos", provided["video"], other, "--output", out,
                          "--cropped_aligned", provided["crops"])
    assert code == 2 and str(other) in text and str(provided["crops"]) in text and not out.exists()
    code, text = _predict("--model", provided["export"], "--videos", other, "--output", out,
                          "--cropped_aligned", provided["crops"])
    assert code == 2 and f"video {other} has no crops folder" in text and not out.exists()
    # Crops folders of videos not given (ABAW's cropped_aligned holds every video's) are passed over with a note.
    crops = tmp_path / "crops"
    shutil.copytree(provided["crops"], crops)
    (crops / "not_given").mkdir()
    code, text = _predict("--model", provided["export"], "--videos", provided["video"], "--output", out,
                          "--cropped_aligned", crops)
    assert code == 0, text
    assert f"1 crops folder(s) under --cropped_aligned {crops} match no video among --videos" in text
    summary = json.loads((out / predict.SUMMARY_FILENAME).read_text())
    assert summary["notes"] and "not_given" in summary["notes"][0] and "not_given" not in {
        v["stem"] for v in summary["videos"]}
