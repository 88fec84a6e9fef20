"""The face stage on real human faces (scikit-image's public-domain astronaut and LFW faces).

The video is made in the test (``tests/real_face_scenes.py``), written as an MJPG ``.avi`` and
read back, so the frames carry real compression: pans, zooms, +-30 degree in-plane rotation, a
half-face occluder, cuts to scenes without a face, title cards of text and cuts between faces.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import real_face_scenes as scenes

from beam_jobs.faces import stage as faces

WIDTH, HEIGHT = 240, 180


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The scene frames, their images replaced by what an MJPG .avi gives back."""
    frames = scenes.real_face_video(WIDTH, HEIGHT)
    path = str(tmp_path_factory.mktemp("real") / "real_faces.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (WIDTH, HEIGHT))
    for f in frames:
        writer.write(f.image)
    writer.release()
    cap = cv2.VideoCapture(path)
    for f in frames:
        ok, f.image = cap.read()
        assert ok
    cap.release()
    return frames


@pytest.fixture(scope="module")
def blazeface():
    return faces.FaceStageConfig().build_detector()  # As the conversion builds it (near_input at its default).


def _run(detector, frames, **options):
    cropper = faces.FaceCropper(detector, **options)
    return [cropper.process(f.image) for f in frames]


def _rates(frames, got):
    with_face = [(f, g) for f, g in zip(frames, got) if f.face is not None]
    without = [g for f, g in zip(frames, got) if f.face is None]
    recall = sum(g.bbox is not None for _, g in with_face) / len(with_face)
    on_face = sum(g.bbox is not None and scenes.centre_in(g.bbox, f.face, WIDTH, HEIGHT) for f, g in with_face)
    false = sum(g.bbox is not None for g in without) / len(without)
    return recall, on_face / len(with_face), false


@pytest.mark.parametrize("detect_every, redetect_change", [(1, None), (5, None), (20, 0.08)])
def test_blazeface_finds_real_faces_on_the_face_and_none_elsewhere(video, blazeface, detect_every, redetect_change):
    got = _run(blazeface, video, detect_every=detect_every, align=True, redetect_change=redetect_change)
    recall, on_face, false = _rates(video, got)
    assert recall >= 0.95 and on_face >= 0.95, (recall, on_face)
    assert false <= 0.05, false
    for kind in scenes.KINDS_WITH_FACE:  # Every kind of difficulty, not just the easy majority.
        pairs = [(f, g) for f, g in zip(video, got) if f.kind == kind]
        hits = sum(g.bbox is not None and scenes.centre_in(g.bbox, f.face, WIDTH, HEIGHT) for f, g in pairs)
        assert hits >= 0.9 * len(pairs), (kind, hits, len(pairs))
    for _, g in zip(video, got):
        assert g.status in faces.FACE_STATUSES and g.crop.shape == (112, 112, 3)
        if g.bbox is not None:  # Never an empty box; keypoints with every BlazeFace box.
            ymin, xmin, ymax, xmax = g.bbox
            assert 0 <= ymin < ymax <= 1 and 0 <= xmin < xmax <= 1
            assert g.keypoints.shape == (6, 2) and g.keypoints.dtype == np.float32
        else:
            assert g.keypoints is None and g.status in (faces.STATUS_LOST, faces.STATUS_NONE)


def test_a_cut_away_from_the_face_drops_it_on_the_cut_frame(video, blazeface):
    got = _run(blazeface, video, detect_every=5, align=True)
    cuts = [i for i in range(1, len(video)) if video[i - 1].face is not None and video[i].face is None]
    assert len(cuts) >= 3
    for i in cuts:  # Not aligned to the schedule, yet no held box crosses the cut.
        assert got[i - 1].bbox is not None and got[i].bbox is None and got[i].status == faces.STATUS_LOST
        at_last_place = faces.face_crop(video[i].image, *_pixels(got[i - 1]), 112, True)
        assert np.abs(got[i].crop.astype(int) - at_last_place).mean() < 1.0  # (Up to the normalised float32s.)
    entries = [i for i in range(1, len(video)) if video[i - 1].face is None and video[i].face is not None]
    assert all(got[i].status == faces.STATUS_DETECTED for i in entries)  # Found on the first frame back.


def _pixels(face):
    """The (box, keypoints) in pixels of a Face, as the cropper held them (up to float32 rounding)."""
    ymin, xmin, ymax, xmax = face.bbox
    box = (xmin * WIDTH, ymin * HEIGHT, (xmax - xmin) * WIDTH, (ymax - ymin) * HEIGHT)
    return box, face.keypoints * np.float32((WIDTH, HEIGHT))


def test_the_held_box_is_dropped_when_the_face_goes_without_a_cut(blazeface):
    still = scenes.place_astronaut(WIDTH, HEIGHT, 80, (120, 90))
    gone = still.image.copy()
    x0, y0, x1, y1 = (int(v) for v in still.face)
    cv2.rectangle(gone, (x0 - 4, y0 - 4), (x1 + 4, y1 + 4), (120, 150, 200), -1)  # A hand over the whole face.
    cuts = faces.ShotCutDetector()
    assert not cuts.update(still.image) and not cuts.update(gone)  # Too small a change for a cut.
    cropper = faces.FaceCropper(blazeface, detect_every=5)
    statuses = [cropper.process(still.image).status for _ in range(7)]
    statuses += [cropper.process(gone).status for _ in range(6)]
    assert statuses == ["detected"] + ["held"] * 4 + ["detected", "held"] + ["held"] * 3 + ["lost"] * 3
    # With the change trigger, the face that went is looked for again as soon as the gap allows.
    cropper = faces.FaceCropper(blazeface, detect_every=15, redetect_change=0.08)
    statuses = [cropper.process(still.image).status for _ in range(20)]
    statuses += [cropper.process(gone).status for _ in range(3)]
    assert statuses == ["detected"] + ["held"] * 14 + ["detected"] + ["held"] * 4 + ["lost"] * 3
    assert cropper.passes_by_reason == {faces.PASS_CUT: 0, faces.PASS_CHANGE: 1, faces.PASS_SCHEDULE: 2}


def test_the_change_trigger_follows_a_moving_face_that_a_fixed_schedule_leaves_behind(video, blazeface):
    pans = [f for f in video if f.kind == "pan"]
    fixed = _run(blazeface, pans, detect_every=15)
    trigger = _run(blazeface, pans, detect_every=15, redetect_change=0.08)

    def offsets(got):
        return [abs((g.bbox[1] + g.bbox[3]) / 2 * WIDTH - (f.face[0] + f.face[2]) / 2) / (f.face[2] - f.face[0])
                for f, g in zip(pans, got)]

    assert max(offsets(trigger)) < 0.25 < max(offsets(fixed))  # In face widths.
    assert sum(g.status == faces.STATUS_DETECTED for g in trigger) <= len(pans) // 2  # Not every frame.


def test_aligned_crops_have_level_eyes_at_the_template(video, blazeface):
    rotated = [f for f in video if f.kind == "rotate"][::4]
    assert max(abs(np.degrees(np.arctan2(*(f.eyes[1] - f.eyes[0])[::-1]))) for f in rotated) > 25
    template = np.array([[0.5 - faces.ALIGN_EYE_DISTANCE / 2, faces.ALIGN_EYE_Y],
                         [0.5 + faces.ALIGN_EYE_DISTANCE / 2, faces.ALIGN_EYE_Y]]) * 112
    for f in rotated:
        face = faces.FaceCropper(blazeface, detect_every=1, align=True).process(f.image)
        again = blazeface.detect_faces(face.crop)
        assert len(again) == 1
        eyes = again[0].keypoints[:2]
        assert np.abs(eyes - template).max() < 4.0, (eyes, template)
        assert abs(eyes[0, 1] - eyes[1, 1]) < 3.0  # Level.


def test_detected_eyes_are_on_the_known_eyes(video, blazeface):
    got = _run(blazeface, video, detect_every=1)
    pairs = [(f, g) for f, g in zip(video, got) if f.eyes is not None and f.kind != "occluded"]
    errors = [np.abs(g.keypoints[:2] * (WIDTH, HEIGHT) - f.eyes).max() for f, g in pairs]
    distance = [np.hypot(*(f.eyes[1] - f.eyes[0])) for f, _ in pairs]
    assert np.median(np.array(errors) / np.array(distance)) < 0.15  # Within a sixth of the eye distance.


def test_blazeface_on_lfw_finds_faces_and_not_non_faces(blazeface):
    def hits(images):
        return sum(bool(blazeface.detect_faces(scenes.lfw_canvas(p))) for p in images)

    assert hits(scenes.lfw(faces=True)) >= 90
    assert hits(scenes.lfw(faces=False)) <= 5


def test_haar_stays_available_and_misses_what_blazeface_handles(video):
    got = _run(faces.make_detector("haar"), video, detect_every=5)
    _, _, false = _rates(video, got)
    assert false <= 0.05  # The cut test protects the cascade too.
    occluded = [g for f, g in zip(video, got) if f.kind == "occluded"]
    assert all(g.bbox is None and g.keypoints is None for g in occluded)  # Frontal-only cascade: the gap.


def test_near_input_96_searches_near_a_held_face_with_the_short_range_model_at_96_pixels(video):
    detector = faces.FaceStageConfig(near_input=96).build_detector()
    near = detector._near
    assert near is not detector._nets["short"] and near.size == detector.near_input == 96
    assert near._interpreter.shape(near._input) == (1, 96, 96, 3)
    assert near._interpreter.shape(near._boxes)[1] == len(near._anchors) == 12 * 12 * 2 + 6 * 6 * 6
    assert detector.near_window == 1.5 and detector.near_face_pixels == 64  # The face keeps its 64 pixels.
    assert detector._nets["short"].size == 128 and detector.input_size == 192  # Whole frames: as before.
    invokes = {"near": 0, "short": 0}
    for key, net in (("near", near), ("short", detector._nets["short"])):
        def counted(inner=net._interpreter.invoke, key=key):
            invokes[key] += 1
            inner()
        net._interpreter.invoke = counted
    cropper = faces.FaceCropper.from_config(faces.FaceStageConfig(near_input=96), detector=detector)
    got = [cropper.process(f.image) for f in video]
    assert invokes["near"] > 0 and invokes["short"] > 0, invokes
    recall, on_face, false = _rates(video, got)  # The real faces are still found, and nothing else.
    assert recall >= 0.95 and on_face >= 0.95 and false <= 0.05, (recall, on_face, false)
    at_128 = faces.FaceStageConfig().build_detector()  # The default, as before the option: one net.
    assert at_128._near is at_128._nets["short"] and at_128.near_window == 2.0
