"""Face detection, choice of side, box hold/smoothing and the square crop (no Beam)."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.synthetic_faces import FaceSpec, render_frame
from beam_jobs import faces


class CountingDetector(faces.Detector):
    """The real Haar detector, counting its calls (to check --detect_every)."""

    name = "counting"

    def __init__(self):
        self.inner = faces.HaarDetector()
        self.calls = 0
        self.widths = []

    def detect(self, gray, min_size=None, max_size=None):
        self.calls += 1
        self.widths.append(gray.shape[1])
        return self.inner.detect(gray, min_size, max_size)


def _frame(cx=80, cy=60, size=90, h=120, w=160, expression=4):
    return render_frame(h, w, [FaceSpec(cx=cx, cy=cy, size=size, expression=expression)], noise_seed=0)


def test_make_detector_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"valid detectors: \['haar'\]"):
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


def test_tracker_holds_a_missed_box_for_max_hold_frames_then_drops_it():
    tracker = faces.BoxTracker(max_hold=2, smoothing=1.0)
    box = (10.0, 10.0, 40.0, 40.0)
    assert tracker.observe(box) == box
    assert tracker.hold() == box  # No detection ran: held without ageing.
    assert tracker.hold() == box
    assert tracker.observe(None) == box  # Miss 1.
    assert tracker.hold() == box  # Held frame 2.
    assert tracker.hold() is None  # Expired.
    assert tracker.last_box == box


def test_tracker_smooths_overlapping_detections_and_jumps_to_far_ones():
    tracker = faces.BoxTracker(smoothing=0.5, max_hold=0)
    tracker.observe((0.0, 0.0, 40.0, 40.0))
    assert tracker.observe((4.0, 0.0, 40.0, 40.0)) == pytest.approx((2.0, 0.0, 40.0, 40.0))
    assert tracker.observe((200.0, 0.0, 40.0, 40.0)) == (200.0, 0.0, 40.0, 40.0)
    assert tracker.observe(None) is None  # max_hold 0: a miss drops the box at once.


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
    assert detector.calls == 3  # Frames 1, 4, 7.
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


def test_cropper_reports_no_face_after_the_hold_and_keeps_the_last_place():
    cropper = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=1, max_hold=1)
    empty = render_frame(120, 160, [], noise_seed=0)
    got = [cropper.process(f) for f in (_frame(), empty, empty)]
    assert got[0].bbox is not None
    assert got[1].bbox is not None  # Held one frame.
    assert got[2].bbox is None
    assert got[2].crop.any()  # Cropped from the last box, not blank.
    first = faces.FaceCropper(faces.make_detector("haar"), crop_size=32, detect_every=1).process(empty)
    assert first.bbox is None and not first.crop.any()  # Never saw a face: blank.


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
