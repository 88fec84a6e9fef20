"""The two frame sources of a track, without Beam: provided crops and a tiny decoded video."""

from __future__ import annotations

import abaw_layout as abaw
import conversion_fixtures as cf
import numpy as np
import pytest
import video_fixtures as vf

from beam_jobs.faces import stage as faces
from beam_jobs.media.video import VideoError, VideoReader
from beam_jobs.pipeline import frame_sources

FACE = faces.FaceStageConfig(crop_size=16, detect_every=1, max_hold=0)


def _source(track, labels, clip_length=4):
    config = cf.config("/unused", face=FACE, clip_length=clip_length)
    return frame_sources.open_frame_source(track, labels, FACE, clip_length, "abaw", config.bucketer())


def test_provided_crops_yield_clips_and_a_note_for_each_unreadable_crop(tmp_path):
    crops = cf.write_crops(tmp_path / "c1", {1: None, 2: b"\xff\xd8 broken", 3: None, 6: None})
    source = _source(cf.track("train", "c1", crops_dir=str(crops)), cf.labels([4, 4, 4, -1, 1, 1]))
    assert isinstance(source, frame_sources.ProvidedCrops)
    items = list(source)
    assert [(i.clip is not None, i.dead_letter is not None) for i in items] == [(False, True), (True, False),
                                                                                (True, False)]
    letter = items[0].dead_letter
    assert (letter.reason, letter.source.endswith("00002.jpg"), letter.frames) == ("unreadable_crop", True, 0)
    first, second = items[1].clip, items[2].clip
    assert first.frame_index.tolist() == [1, 2, 3, 4] and first.has_face.tolist() == [True, False, True, False]
    assert second.frame_index.tolist() == [5, 6] and second.has_face.tolist() == [False, True]  # Crop 5 is missing.
    assert np.allclose(first.bbox[0], [0, 0, 1, 1])  # The provided crop is the face.
    assert faces.decode_image(first.images[0]).shape == (16, 16, 3)
    assert source.frames_read == 6
    assert first.timestamp_us.tolist() == [round(i * 1e6 / 30) for i in range(4)]  # No video: 30 fps.


def test_decoded_video_skips_unlabelled_clips_and_reports_the_frames_it_gave(tmp_path):
    video = vf.write_face_video(tmp_path / "v.avi", [4] * 6)
    track = cf.track("train", "v", media_path=str(video), data_path="v.avi")
    source = _source(track, cf.labels([-1, -1, 4, 4, 4, 4, 4, 4]), clip_length=2)  # Two lines past the end.
    assert isinstance(source, frame_sources.DecodedVideo)
    clips = [item.clip for item in source]
    assert all(c is not None for c in clips)
    assert [c.frame_index.tolist() for c in clips] == [[3, 4], [5, 6]]  # Frames 1-2 skipped without a clip.
    assert all(c.has_face.all() for c in clips)
    assert clips[0].frame_rate == pytest.approx(vf.FPS)
    assert source.frames_read == 6


def test_decoded_video_raises_a_video_error_for_media_that_does_not_decode(tmp_path):
    media = abaw.write_media(tmp_path, "broken.avi", b"\x00" * 100)
    source = _source(cf.track("train", "broken", media_path=str(media)), cf.labels([4, 4]))
    with pytest.raises(VideoError):
        list(source)


def test_provided_crops_stop_at_the_videos_decodable_length_when_the_video_is_there(tmp_path):
    crops = cf.write_crops(tmp_path / "c1", {i: None for i in range(1, 7)})
    video = vf.write_face_video(tmp_path / "v.avi", [4] * 4)  # 4 frames for 6 annotation lines
    track = cf.track("train", "v", crops_dir=str(crops), media_path=str(video), data_path="v.avi")
    source = _source(track, cf.labels([4] * 6))
    assert isinstance(source, frame_sources.ProvidedCrops)
    clips = [item.clip for item in source if item.clip is not None]
    assert [c.frame_index.tolist() for c in clips] == [[1, 2, 3, 4]]  # Lines 5-6: beyond_video_end downstream.
    assert source.frames_read == 4
    assert clips[0].frame_rate == pytest.approx(vf.FPS)  # The video's rate, not the 30 fps default.


def test_a_crops_folder_named_otherwise_is_a_dead_letter_not_silent_blank_crops(tmp_path):
    folder = tmp_path / "c1"
    folder.mkdir()
    for i in range(1, 5):  # Four digits: not the 00001.jpg the layout names.
        (folder / f"{i:04d}.jpg").write_bytes(faces.encode_jpeg(np.full((16, 16, 3), 128, np.uint8)))
    items = list(_source(cf.track("train", "c1", crops_dir=str(folder)), cf.labels([4, 4, 4, 4])))
    letters = [i.dead_letter for i in items if i.dead_letter is not None]
    assert [(d.reason, d.source, d.frames) for d in letters] == [("no_provided_crop", str(folder), 0)]
    assert "none of the 4 frames" in letters[0].message and "00001.jpg" in letters[0].message
    (clip,) = [i.clip for i in items if i.clip is not None]
    assert not clip.has_face.any()  # Still written, every labelled frame accounted for.


def _avi_declaring(path, frames: int, declared: int):
    """An MJPG AVI of ``frames`` frames whose headers declare ``declared`` (a damaged or hand-edited container)."""
    import struct

    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), vf.FPS, (32, 32))
    for i in range(frames):
        writer.write(vf.face_frame(4, 32, 32, seed=i))
    writer.release()
    data = bytearray(path.read_bytes())
    at = data.index(b"avih") + 8 + 16  # MainAVIHeader.dwTotalFrames
    data[at:at + 4] = struct.pack("<I", declared)
    at = data.index(b"strh") + 8 + 32  # AVIStreamHeader.dwLength
    data[at:at + 4] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))
    return path


def test_frames_after_those_the_container_declares_are_a_dead_letter_for_a_whole_video_row(tmp_path):
    from beam_jobs.sources import media_rows, segments

    video = _avi_declaring(tmp_path / "v.avi", 12, 8)
    fps, declared, _ = media_rows.container_frames(str(video))
    assert declared == 8  # What the labels of a row without start/end are sized by.
    labels = segments.build_labels([segments.Segment(None, None, 4)], fps, declared)
    assert labels.open_end and labels.num_frames == 8
    source = _source(cf.track("train", "v", media_path=str(video), data_path="v.avi"), labels)
    items = list(source)
    assert [c.frame_index.tolist() for c in (i.clip for i in items) if c is not None] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    (letter,) = [i.dead_letter for i in items if i.dead_letter is not None]
    assert (letter.reason, letter.source, letter.frames) == ("undeclared_frames", str(video), 0)
    assert "4 frame(s) after the 8 its container declares" in letter.message
    assert source.frames_read == 8
    # Labels sized by a count that is not the container's (counting by decoding stops at a day): not "declared".
    counted = _source(cf.track("train", "v", media_path=str(video)), segments.build_labels(
        [segments.Segment(None, None, 4)], fps, 6))
    (letter,) = [i.dead_letter for i in counted if i.dead_letter is not None]
    assert "6 frame(s) after the first 6 (a count by decoding stops at 24 h)" in letter.message
    # A segment's labels end where the row says: the frames after them are not its business.
    segment = segments.build_labels([segments.Segment(0.0, 0.8, 4)], fps, declared)
    assert not segment.open_end
    assert not [i for i in _source(cf.track("train", "v", media_path=str(video)), segment) if i.dead_letter]


def _mkv_lasting(path, frames: int, fraction: float):
    """An MJPG Matroska file of ``frames`` frames whose Segment Info says it lasts ``fraction`` of that (a muxer's
    wrong duration; a variable-rate stream does the same to OpenCV's frame count, duration x guessed rate)."""
    import struct

    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), vf.FPS, (32, 32))
    for i in range(frames):
        writer.write(vf.face_frame(4, 32, 32, seed=i))
    writer.release()
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88")  # Duration: element id 0x4489, an 8-byte float.
    (duration,) = struct.unpack(">d", data[at + 3:at + 11])
    data[at + 3:at + 11] = struct.pack(">d", duration * fraction)
    path.write_bytes(bytes(data))
    return path


def test_a_matroska_frame_count_is_counted_by_decoding_not_taken_from_its_duration(tmp_path):
    import cv2

    from beam_jobs.sources import media_rows, segments

    video = _mkv_lasting(tmp_path / "v.mkv", 12, 0.5)
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6  # What OpenCV says: half the frames (before: all that counted).
    capture.release()
    with VideoReader(str(video)) as reader:
        assert not reader.counts_frames  # Matroska stores no frame count.
    fps, frames, why = media_rows.container_frames(str(video))
    assert (frames, why) == (12, "")
    labels = segments.build_labels([segments.Segment(None, None, 4)], fps, frames)
    items = list(_source(cf.track("train", "v", media_path=str(video), data_path="v.mkv"), labels))
    assert [c.frame_index.tolist() for c in (i.clip for i in items) if c is not None] == [
        [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert not [i for i in items if i.dead_letter is not None]


def test_a_frame_count_past_the_file_size_is_counted_by_decoding(tmp_path):
    # A header that lies (here 500,000 frames in a file of ~9 KB, within a day at its 10 fps) was taken as the count:
    # the track's labels were laid out per frame (memory set by the header, 4 GB for 80 million) and the accounting
    # counted the frames past the real end as beyond_video_end.
    import struct

    import cv2

    from beam_jobs.sources import media_rows

    video = vf.write_container_video(tmp_path / "v.avi", [vf.level_frame(i) for i in range(10)])
    data = bytearray(video.read_bytes())
    for chunk, offset in ((b"avih", 16), (b"strh", 32)):  # avih's total frames, the video stream's length
        struct.pack_into("<I", data, data.find(chunk) + 8 + offset, 500_000)
    video.write_bytes(bytes(data))
    capture = cv2.VideoCapture(str(video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 500_000 and len(data) < 500_000
    capture.release()
    assert media_rows.container_frames(str(video)) == (10.0, 10, "")


def test_a_video_with_nothing_labelled_is_not_opened_again(tmp_path):
    # A manifest or folder row whose video has no readable frame count labels nothing (its rows are counted, with a
    # dead letter, when the labels are built); opening the video here again gave a second dead letter for it.
    from beam_jobs.sources import media_rows, segments

    empty = tmp_path / "zero.mp4"
    empty.write_bytes(b"")
    fps, frames, why = media_rows.container_frames(str(empty))
    assert frames is None and "zero-byte" in why
    labels = segments.build_labels([segments.Segment(None, None, 4)], fps, frames, where=str(empty), why_unknown=why)
    assert labels.num_frames == 0 and [d.reason for d in labels.dead_letters] == ["unreadable_media"]
    assert list(_source(cf.track("train", "zero", media_path=str(empty)), labels)) == []
