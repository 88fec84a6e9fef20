"""Face detection, choice of side, box hold/smoothing and the square crop (no Beam)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectstream.synthetic_faces import FaceSpec, render_frame
from beam_jobs.faces import detectors
from beam_jobs.faces import stage as faces


class CountingDetector(faces.HaarDetector):
    """The real Haar detector, counting its calls (to check --detect_every)."""

    name = "counting"

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.widths = []

    def detect_faces(self, image, min_size=None, max_size=None):
        self.calls += 1
        self.widths.append(image.shape[1])
        return super().detect_faces(image, min_size, max_size)


class ScriptedDetector(faces.Detector):
    """Returns the detections it is given, whatever the image: any Detector the cropper may be handed."""

    name = "scripted"
    wants_color = True
    min_confidence = 0.5

    def __init__(self, detections):
        self.detections = detections

    def detect_faces(self, image, min_size=None, max_size=None):
        return list(self.detections)


def _frame(cx=80, cy=60, size=90, h=120, w=160, expression=4):
    return render_frame(h, w, [FaceSpec(cx=cx, cy=cy, size=size, expression=expression)], noise_seed=0)


def test_make_detector_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid detectors: \['blazeface', 'blazeface_full', 'blazeface_short', "
                                         r"'haar', 'mtcnn'\]"):
        faces.make_detector("dlib")


def test_haar_finds_the_drawn_face_where_it_is():
    boxes = faces.make_detector("haar").detect(_frame(cx=80, cy=60)[..., 1])
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert abs(x + w / 2 - 80) < 10 and abs(y + h / 2 - 60) < 12


def test_choose_face_picks_the_side_and_refuses_a_lone_face_on_the_other_side():
    left, right = (10.0, 10.0, 50.0, 50.0), (150.0, 12.0, 50.0, 50.0)
    assert faces.choose_face([right, left], "left", 240) == left
    assert faces.choose_face([right, left], "right", 240) == right
    assert faces.choose_face([right], "left", 240) is None
    assert faces.choose_face([left], "left", 240) == left
    big = (0.0, 0.0, 90.0, 90.0)
    assert faces.choose_face([left, big], None, 240) == big
    with pytest.raises(ValueError, match="side must be one of"):
        faces.choose_face([left], "middle", 240)


def test_tracker_drops_the_box_at_a_failed_detection_and_after_max_hold_frames():
    tracker = faces.BoxTracker(max_hold=2, smoothing=1.0)
    box = (10.0, 10.0, 40.0, 40.0)
    assert tracker.observe(box) == box
    assert tracker.hold() == box and tracker.hold() == box  # Held 2 frames after the detection.
    assert tracker.hold() is None  # max_hold passed.
    assert tracker.observe(box) == box
    assert tracker.observe(None) is None and tracker.current is None  # A failed detection: gone at once.
    assert tracker.hold() is None
    assert tracker.last_box == box


def test_tracker_smooths_overlapping_detections_and_jumps_to_far_ones():
    tracker = faces.BoxTracker(smoothing=0.5, max_hold=0)
    tracker.observe((0.0, 0.0, 40.0, 40.0))
    assert tracker.observe((4.0, 0.0, 40.0, 40.0)) == pytest.approx((2.0, 0.0, 40.0, 40.0))
    assert tracker.observe((200.0, 0.0, 40.0, 40.0)) == (200.0, 0.0, 40.0, 40.0)
    assert tracker.observe(None) is None


def test_tracker_smooths_keypoints_bridges_a_recent_miss_and_forgets_at_a_cut():
    tracker = faces.BoxTracker(smoothing=0.5, memory=3)
    kps = np.array([[10.0, 10.0], [30.0, 10.0]], np.float32)
    tracker.observe((0.0, 0.0, 40.0, 40.0), kps)
    tracker.observe(None)  # Missed: dropped, but the next detection (within 3 frames) is still blended.
    assert tracker.observe((4.0, 0.0, 40.0, 40.0), kps + 4) == pytest.approx((2.0, 0.0, 40.0, 40.0))
    np.testing.assert_allclose(tracker.keypoints, kps + 2)
    for _ in range(4):
        tracker.hold()
    assert tracker.observe((8.0, 0.0, 40.0, 40.0)) == (8.0, 0.0, 40.0, 40.0)  # 5 frames later: not blended.
    tracker.cut()
    assert tracker.current is None and tracker.last_box == (8.0, 0.0, 40.0, 40.0)
    assert tracker.observe((10.0, 0.0, 40.0, 40.0)) == (10.0, 0.0, 40.0, 40.0)  # The last shot is not blended in.


def test_shot_cut_detector_flags_a_new_scene_but_not_motion_or_the_first_frame():
    cuts = faces.ShotCutDetector()
    assert not cuts.update(_frame(cx=70))
    assert not cuts.update(_frame(cx=74))  # The face moved: same shot.
    assert not cuts.update(_frame(cx=74, expression=1))
    scene = np.full((120, 160, 3), 230, np.uint8)
    assert cuts.update(scene) and cuts.last_score > 0.1
    assert not cuts.update(scene)
    assert cuts.update(np.full((60, 80, 3), 230, np.uint8))  # Another frame size.
    with pytest.raises(ValueError, match="threshold"):
        faces.ShotCutDetector(threshold=0)


def test_square_crop_is_square_and_pads_at_the_border():
    image = np.full((100, 200, 3), 255, np.uint8)
    crop = faces.square_crop(image, (0.0, 0.0, 40.0, 40.0), 32)  # Square runs off the top-left corner.
    assert crop.shape == (32, 32, 3)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[-1, -1].tolist() == [255, 255, 255]
    assert faces.square_crop(image, None, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="crop_size"):
        faces.square_crop(image, None, 0)


def test_encode_jpeg_is_deterministic_and_decodes():
    crop = faces.square_crop(_frame(), (35.0, 15.0, 90.0, 90.0), 64)
    a, b = faces.encode_jpeg(crop), faces.encode_jpeg(crop.copy())
    assert a == b and a[:2] == b"\xff\xd8"
    assert faces.decode_image(a).shape == (64, 64, 3)
    assert faces.decode_image(b"not a jpeg") is None


def test_cropper_detects_every_n_frames_on_a_downscaled_copy_then_near_the_held_box():
    detector = CountingDetector()
    frame = render_frame(480, 640, [FaceSpec(cx=320, cy=240, size=300)], noise_seed=0)
    cropper = faces.FaceCropper(detector, crop_size=48, detect_every=3, detect_width=160)
    results = [cropper.process(frame) for _ in range(7)]
    assert detector.calls == 3 == cropper.detections_run  # Frames 1, 4, 7.
    assert cropper.passes_by_reason == {faces.PASS_CUT: 0, faces.PASS_CHANGE: 0, faces.PASS_SCHEDULE: 3}
    assert detector.widths[0] == 160  # Full frame, downscaled.
    assert all(w < 160 for w in detector.widths[1:])  # Then a small window around the held face.
    for result in (results[0], results[-1]):
        ymin, xmin, ymax, xmax = result.bbox
        assert abs((xmin + xmax) / 2 - 0.5) < 0.05 and abs((ymin + ymax) / 2 - 0.5) < 0.06
    assert all(r.crop.shape == (48, 48, 3) for r in results)


def test_cropper_follows_a_moving_face_and_finds_it_again_after_a_jump():
    cropper = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=1)
    for cx in (100, 110, 120, 130):
        face = cropper.process(render_frame(240, 320, [FaceSpec(cx=cx, cy=120, size=120)], noise_seed=0))
        assert abs((face.bbox[1] + face.bbox[3]) / 2 * 320 - cx) < 12
    jumped = cropper.process(render_frame(240, 320, [FaceSpec(cx=250, cy=120, size=120)], noise_seed=0))
    assert abs((jumped.bbox[1] + jumped.bbox[3]) / 2 * 320 - 250) < 12  # Local search missed: full frame.


def test_cropper_drops_the_face_when_redetection_fails_and_keeps_the_last_place():
    cropper = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=1)
    empty = render_frame(120, 160, [], noise_seed=0)
    got = [cropper.process(f) for f in (_frame(), _frame(), empty, empty)]
    assert [g.status for g in got] == [faces.STATUS_DETECTED, faces.STATUS_DETECTED, faces.STATUS_LOST,
                                       faces.STATUS_LOST]
    assert got[1].bbox is not None and got[2].bbox is None and got[3].bbox is None
    assert np.array_equal(got[2].crop, faces.square_crop(empty, cropper_last_box(got[1], 120, 160), 32))
    first = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=1).process(empty)
    assert first.bbox is None and not first.crop.any() and first.status == faces.STATUS_NONE


def cropper_last_box(face, h, w):
    ymin, xmin, ymax, xmax = face.bbox
    return (xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h)


def test_cropper_holds_between_detections_until_max_hold():
    cropper = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=4, max_hold=2)
    statuses = [cropper.process(_frame()).status for _ in range(5)]
    assert statuses == ["detected", "held", "held", "lost", "detected"]


def test_cropper_never_returns_a_box_below_threshold_tiny_or_outside_the_frame():
    frame = _frame()  # 120 x 160.
    kps = np.array([[60.0, 50.0], [90.0, 50.0]], np.float32)
    bad = [faces.Detection((40.0, 20.0, 60.0, 60.0), 0.3, kps),  # Under the detector's threshold.
           faces.Detection((150.0, 100.0, 60.0, 60.0), 0.9, kps),  # Mostly outside the frame.
           faces.Detection((-80.0, -70.0, 70.0, 70.0), 0.9, kps),  # Outside altogether.
           faces.Detection((40.0, 20.0, 1.5, 1.5), 0.9, kps),  # Tiny.
           faces.Detection((40.0, 20.0, 0.0, 0.0), 0.9, None),  # Empty: the [0, 0, 0, 0] box of old.
           faces.Detection((40.0, 20.0, float("nan"), 60.0), 0.9, None)]
    for det in bad:
        cropper = faces.FaceCropper(ScriptedDetector([det]), crop_size=32, detect_every=1, align=True)
        face = cropper.process(frame)
        assert face.bbox is None and face.status == faces.STATUS_NONE, det
    good = faces.Detection((40.0, 20.0, 60.0, 60.0), 0.9, kps)
    face = faces.FaceCropper(ScriptedDetector([good]), crop_size=32, detect_every=1, align=True).process(frame)
    assert face.bbox == pytest.approx((20 / 120, 40 / 160, 80 / 120, 100 / 160))
    assert face.status == faces.STATUS_DETECTED and face.keypoints.dtype == np.float32
    np.testing.assert_allclose(face.keypoints, kps / np.float32((160, 120)), rtol=1e-6)
    assert np.array_equal(face.crop, faces.aligned_crop(frame, kps, 32, good.box))  # Cut from the stored box.


def test_cropper_at_a_cut_drops_the_held_box_and_detects_at_once():
    detector = CountingDetector()
    cropper = faces.FaceCropper(detector, crop_size=32, detect_every=10)
    assert cropper.process(_frame()).status == "detected"
    assert cropper.process(_frame()).status == "held"
    title = np.full((120, 160, 3), 20, np.uint8)
    cv2.putText(title, "THE END", (10, 70), cv2.FONT_HERSHEY_DUPLEX, 1.2, (240, 240, 240), 2)
    calls = detector.calls
    after = cropper.process(title)
    assert detector.calls == calls + 1 and after.status == "lost" and after.bbox is None
    assert cropper.process(title).status == "lost"  # Not held again: the held box went with the cut.
    back = cropper.process(_frame())  # Cut back: detected on the cut frame, not 8 frames later.
    assert back.status == "detected" and back.bbox is not None
    assert cropper.passes_by_reason == {faces.PASS_CUT: 2, faces.PASS_CHANGE: 0, faces.PASS_SCHEDULE: 1}


def test_aligned_crop_puts_the_eyes_level_at_the_template():
    image = np.zeros((300, 400, 3), np.uint8)
    angle = np.deg2rad(25)
    centre, half = np.array([200.0, 150.0]), 40.0
    eyes = np.array([centre - half * np.array([np.cos(angle), np.sin(angle)]),
                     centre + half * np.array([np.cos(angle), np.sin(angle)])], np.float32)
    for (x, y), colour in zip(eyes, ((0, 0, 255), (0, 255, 0))):
        cv2.circle(image, (round(float(x)), round(float(y))), 3, colour, -1)
    crop = faces.aligned_crop(image, eyes, 112)
    for channel, expected_x in ((2, 0.5 - faces.ALIGN_EYE_DISTANCE / 2), (1, 0.5 + faces.ALIGN_EYE_DISTANCE / 2)):
        ys, xs = np.nonzero(crop[:, :, channel] > 100)
        assert abs(xs.mean() - expected_x * 112) < 1.5 and abs(ys.mean() - faces.ALIGN_EYE_Y * 112) < 1.5
    box = (120.0, 70.0, 160.0, 160.0)  # Shrinking path: the same geometry within a pixel.
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
    small = faces.aligned_crop(big, eyes * 4 + 1.5, 112, tuple(v * 4 for v in box))
    ys, xs = np.nonzero(small[:, :, 2] > 60)
    assert abs(xs.mean() - (0.5 - faces.ALIGN_EYE_DISTANCE / 2) * 112) < 1.5
    with pytest.raises(ValueError, match="same place"):
        faces.aligned_crop(image, np.zeros((2, 2), np.float32), 112)


def test_face_stage_config_round_trips_and_reads_older_options_as_their_stage():
    config = faces.FaceStageConfig()
    assert (config.detector, config.align, config.detect_every, config.redetect_change) == ("blazeface", True, 20, 0.08)
    old = faces.FaceStageConfig(detector="haar", detect_every=5, align=False, redetect_change=None)
    assert faces.FaceStageConfig.from_dict(old.to_dict()) == old  # None of redetect_change is kept.
    older = faces.FaceStageConfig.from_dict({"detector": "haar", "crop_size": 64})  # Before align existed.
    assert (older.align, older.redetect_change) == (False, None)


def test_near_input_is_the_models_own_128_by_default_and_for_options_recorded_before_it():
    assert faces.FaceStageConfig().near_input == 128 == detectors.SHORT_RANGE_INPUT
    new = faces.FaceStageConfig(near_input=112)
    assert faces.FaceStageConfig.from_dict(new.to_dict()) == new
    assert faces.FaceStageConfig.from_dict(faces.FaceStageConfig(near_input=96).to_dict()).near_input == 96
    # dataset_info.json options of a conversion made before the field (with align and redetect_change recorded).
    before = faces.FaceStageConfig.from_dict({"detector": "blazeface", "align": True, "redetect_change": 0.08})
    assert before == faces.FaceStageConfig(near_input=128)


@pytest.mark.parametrize("bad", [0, -16, 8, 100, 136, 96.0, True])
def test_near_input_must_be_a_positive_multiple_of_the_coarsest_stride(bad):
    assert detectors.NEAR_INPUT_STEP == 16
    with pytest.raises(ValueError, match=r"near_input must be a positive multiple of 16 .*, got "):
        detectors.check_near_input(bad)
    with pytest.raises(ValueError, match="near_input must be a positive multiple of 16"):
        faces.BlazeFaceDetector(near_input=bad)  # Refused before any model is loaded.


def test_near_input_goes_to_the_detectors_whose_near_passes_run_the_short_range_model():
    with pytest.raises(ValueError, match="blazeface_full"):
        faces.BlazeFaceDetector("full", near_input=96)
    # The other detectors have no such pass: the field does not reach them (any value is left alone).
    assert isinstance(faces.FaceStageConfig(detector="haar", near_input=64).build_detector(), faces.HaarDetector)
    assert faces.FaceStageConfig(detector="blazeface_full").build_detector().near_input is None
    assert set(faces.NEAR_INPUT_DETECTORS) == {"blazeface", "blazeface_short"}


def test_cropper_picks_the_left_or_right_subject():
    frame = render_frame(120, 240, [FaceSpec(cx=60, cy=60, size=90), FaceSpec(cx=180, cy=60, size=90)], noise_seed=0)
    left = faces.FaceCropper(faces.make_detector("haar"), detect_every=1, side="left").process(frame)
    right = faces.FaceCropper(faces.make_detector("haar"), detect_every=1, side="right").process(frame)
    assert left.bbox[3] < 0.5 < right.bbox[1]


def test_cropper_checks_its_arguments():
    with pytest.raises(ValueError, match="detect_every"):
        faces.FaceCropper(faces.make_detector("haar"), detect_every=0)
    with pytest.raises(ValueError, match="side must be one of"):
        faces.FaceCropper(faces.make_detector("haar"), side="top")


def test_face_stage_crop_differences_name_only_the_fields_that_change_a_crop():
    stage = faces.FaceStageConfig()  # blazeface, detect_every 20, jpeg
    assert stage.crop_differences(faces.FaceStageConfig(detect_every=3)) == {"detect_every": (20, 3)}
    assert stage.crop_differences(faces.FaceStageConfig(codec="raw", align=False)) == {"align": (True, False),
                                                                                       "codec": ("jpeg", "raw")}
    assert stage.crop_differences(faces.FaceStageConfig(detect_width=128)) == {"detect_width": (320, 128)}
    assert stage.crop_differences(faces.FaceStageConfig(max_hold=5)) == {"max_hold": (None, 5)}
    # Settings the stage does not use, or uses to the same effect: the same crops.
    assert stage.crop_differences(faces.FaceStageConfig(detect_width=640)) == {}  # both shrink a frame to 192
    assert stage.crop_differences(faces.FaceStageConfig(max_hold=19)) == {}  # a box is held 19 frames at most
    assert faces.FaceStageConfig(codec="raw").crop_differences(faces.FaceStageConfig(codec="raw", jpeg_quality=50)) == {}
    haar = faces.FaceStageConfig(detector="haar")
    assert haar.crop_differences(faces.FaceStageConfig(detector="haar", near_input=96, align=False)) == {}
    assert haar.crop_differences(faces.FaceStageConfig(detector="haar", detect_width=640)) == {"detect_width": (320, 640)}
    every = faces.FaceStageConfig(detect_every=1)
    assert every.crop_differences(faces.FaceStageConfig(detect_every=1, redetect_change=None, max_hold=0)) == {}
    assert stage.crop_differences(faces.FaceStageConfig(near_input=96)) == {"near_input": (128, 96)}


def test_the_detectors_face_stage_tables_are_what_the_detectors_do():
    for name in ("haar", "blazeface", "blazeface_short", "blazeface_full"):
        detector = faces.make_detector(name)
        assert (name in detectors.EYELESS_DETECTORS) == (not detector.keypoint_names)
        # The nets it runs, not its input_size (which the table sets): the largest is what a whole frame shrinks to.
        nets = getattr(detector, "_nets", None)
        assert detectors.WHOLE_FRAME_INPUT.get(name) == (max(net.size for net in nets.values()) if nets else None)
    assert detectors.MtcnnDetector.keypoint_names and "mtcnn" not in detectors.WHOLE_FRAME_INPUT


def test_a_detect_width_past_the_detectors_input_cuts_the_same_crops():
    frames = [render_frame(360, 800, [FaceSpec(cx=300 + 4 * i, cy=180, size=150)], noise_seed=i) for i in range(6)]
    crops = []
    for width in (320, 640):
        cropper = faces.FaceCropper.from_config(faces.FaceStageConfig(detect_width=width, detect_every=2))
        crops.append([cropper.process(frame) for frame in frames])
    assert any(face.bbox is not None for face in crops[0])
    for a, b in zip(*crops):
        assert a.bbox == b.bbox and np.array_equal(a.crop, b.crop)
