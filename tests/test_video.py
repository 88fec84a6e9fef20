"""Decoding: every container FFmpeg reads opens, a frame that does not decode is reported in its place, phone video
comes out upright at its presentation times, and a cut file is told (issue 20 points 3, 4, 7)."""

import os

import mp4_boxes
import numpy as np
import pytest
import video_fixtures as vf

from beam_jobs.media.video import (
    VIDEO_EXTENSIONS,
    FrameStatus,
    VideoError,
    VideoReader,
    frame_timestamp_us,
    has_video_extension,
    probe_video,
)

N = 9


def levels(n=N):
    return [vf.level_frame(i) for i in range(1, n + 1)]


def statuses(path, decode=True):
    """[(index, status, level of the decoded image or None)] up to and including END."""
    out = []
    with VideoReader(str(path)) as video:
        while True:
            frame = video.next_frame(decode=decode)
            out.append((frame.index, frame.status,
                        None if frame.image is None else vf.level_index(frame.image)))
            if frame.status is FrameStatus.END:
                return out


def expected(n, corrupt=()):
    rows = [(i, FrameStatus.CORRUPT, None) if i in corrupt else (i, FrameStatus.DECODED, i) for i in range(1, n + 1)]
    return rows + [(n + 1, FrameStatus.END, None)]


@pytest.mark.parametrize("ext", VIDEO_EXTENSIONS)
def test_every_container_opens_and_reads_every_frame_in_order(tmp_path, ext):
    path = vf.write_container_video(tmp_path / f"clip{ext}", levels())
    assert statuses(path) == expected(N)


@pytest.mark.parametrize("name", ["CLIP.MP4", "Clip.Mov", "clip.MKV", "clip.AVI"])
def test_container_extensions_match_in_any_letter_case(tmp_path, name):
    path = vf.write_container_video(tmp_path / name, levels())
    assert has_video_extension(str(path)) and not has_video_extension(str(tmp_path / "clip.txt"))
    assert statuses(path) == expected(N)


def test_corrupt_middle_frame_is_reported_in_its_place_and_decoding_goes_on(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "mid.avi", levels()), [5])
    assert statuses(path) == expected(N, corrupt={5})
    with VideoReader(str(path)) as video:
        while video.next_frame().status is not FrameStatus.END:
            pass
        assert (video.frames_read, video.decode_errors) == (N, 1)
    probe = probe_video(str(path))
    assert (probe.frames, probe.decode_errors, probe.width, probe.height) == (N, 1, vf.WIDTH, vf.HEIGHT)


def test_runs_of_corrupt_frames_and_a_corrupt_first_frame_keep_every_index(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "runs.avi", levels()), [1, 4, 5, 6])
    assert statuses(path) == expected(N, corrupt={1, 4, 5, 6})
    assert statuses(path, decode=False) == [(i, s, None) for i, s, _ in expected(N, corrupt={1, 4, 5, 6})]


def test_timestamps_follow_the_index_across_a_corrupt_frame(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "ts.avi", levels()), [3])
    with VideoReader(str(path)) as video:
        stamps = []
        frame = video.next_frame()
        while frame.status is not FrameStatus.END:
            stamps.append((frame.index, frame.timestamp_us))
            frame = video.next_frame()
    assert stamps == [(i, frame_timestamp_us(i, vf.FPS)) for i in range(1, N + 1)]
    assert stamps[3] == (4, 300_000)


def test_frames_at_the_very_end_that_do_not_decode_are_the_end(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "tail.avi", levels()), [8, 9])
    assert statuses(path) == expected(7)
    assert probe_video(str(path)).frames == 7


def test_truncated_file_ends_at_the_cut(tmp_path):
    path = vf.truncate_file(vf.write_face_video(tmp_path / "cut.avi", [4] * 12), 0.5)
    rows = statuses(path)
    assert rows[-1][1] is FrameStatus.END and all(s is FrameStatus.DECODED for _, s, _ in rows[:-1])
    assert [i for i, _, _ in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) - 1 < 12


def test_legacy_read_stops_at_a_corrupt_frame_and_skip_passes_it(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "legacy.avi", levels()), [5])
    with VideoReader(str(path)) as video:
        got = []
        while (image := video.read()) is not None:
            got.append(vf.level_index(image))
        assert got == [1, 2, 3, 4] and video.frames_read == 4  # Lines 5.. are then accounted as lost.
    with VideoReader(str(path)) as video:
        assert all(video.skip() for _ in range(5)) and video.frames_read == 5
        assert vf.level_index(video.read()) == 6
    with VideoReader(str(path)) as video:
        assert [(i, vf.level_index(image)) for i, _, image in video.frames()] == [
            (i, i) for i in range(1, N + 1) if i != 5]


def test_after_the_end_every_call_says_end(tmp_path):
    path = vf.write_container_video(tmp_path / "short.mp4", levels(3))
    with VideoReader(str(path)) as video:
        assert [video.next_frame().status for _ in range(5)] == [FrameStatus.DECODED] * 3 + [FrameStatus.END] * 2
        assert video.next_frame().index == 4 and video.read() is None and not video.skip()


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_empty_or_garbage_file_raises_video_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match="bad.mp4"), VideoReader(str(path)):
        pass


def test_video_with_no_decodable_frame_raises_video_error(tmp_path):
    path = vf.corrupt_mjpeg_frames(vf.write_container_video(tmp_path / "dead.avi", levels(3)), [1, 2, 3])
    with pytest.raises(VideoError, match="no frame decodes"), VideoReader(str(path)):
        pass


# ------------------------------------------------------------------------- phone video, variable frame rate, cuts
def _marked(height=120, width=160):
    """A frame whose top-left block tells its orientation."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[10:40, 10:60] = 255
    return frame


@pytest.mark.parametrize("turned, shown_ccw, clockwise", [(-1, 90, 270), (1, 270, 90), (2, 180, 180)])
def test_rotated_phone_video_is_read_upright(tmp_path, turned, shown_ccw, clockwise):
    upright = _marked()
    path = vf.write_container_video(tmp_path / "phone.mp4", [np.ascontiguousarray(np.rot90(upright, k=turned))] * 3)
    mp4_boxes.set_display_rotation(path, shown_ccw)  # Stored turned, shown upright: what a phone writes.
    with VideoReader(str(path)) as video:
        frame = video.next_frame()
        assert (video.rotation, video.width, video.height) == (clockwise, 160, 120)
        assert frame.image.shape == upright.shape and np.abs(frame.image.astype(int) - upright).mean() < 2
        assert video.facts().rotation == clockwise


def test_timestamps_are_presentation_times_and_variable_frame_rate_is_said(tmp_path):
    durations = [1 / 30] * 20 + [4 / 30] * 20  # 30 fps, then 7.5 fps.
    path = mp4_boxes.set_frame_durations(vf.write_container_video(tmp_path / "vfr.mp4", levels(40), fps=30),
                                         durations)
    probe = probe_video(str(path))
    shown = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    np.testing.assert_allclose(probe.timestamps_us / 1e6, shown, atol=1e-6)
    assert probe.timestamps_us[20] == 666_667 and probe.fps == pytest.approx(12.0)  # Not 1.667 s from 12 fps.
    assert probe.facts.variable_frame_rate and not probe.facts.truncated
    assert (probe.frames, probe.decode_errors) == (40, 0)
    constant = probe_video(str(vf.write_container_video(tmp_path / "cfr.mkv", levels(30), fps=30)))
    assert not constant.facts.variable_frame_rate  # Millisecond times (33, 67, 100 ms...) are not a variable rate.


def test_corrupt_frames_keep_their_indices_and_get_times_between_their_neighbours(tmp_path):
    import cv2

    path = tmp_path / "vfr_mjpeg.mp4"  # Motion JPEG in MP4: a frame's bytes can be corrupted, its times edited.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (vf.WIDTH, vf.HEIGHT))
    for frame in levels(9):
        writer.write(frame)
    writer.release()
    mp4_boxes.set_frame_durations(path, [0.1] * 4 + [0.3] * 5)
    vf.corrupt_mjpeg_frames(path, [7])
    assert statuses(path) == expected(9, corrupt={7})  # Variable rate: the index comes from the failed grabs.
    with VideoReader(str(path)) as video:
        stamps = [video.next_frame().timestamp_us for _ in range(9)]
        assert video.facts().variable_frame_rate
    assert stamps == [0, 100_000, 200_000, 300_000, 400_000, 700_000, 1_000_000, 1_300_000, 1_600_000]


@pytest.mark.parametrize("ext", [".avi", ".mkv"])
def test_a_cut_file_is_told_from_its_declared_frame_count(tmp_path, ext):
    path = vf.truncate_file(vf.write_container_video(tmp_path / f"cut{ext}", levels(30), fps=30), 0.5)
    facts = probe_video(str(path)).facts
    assert facts.truncated and facts.declared_frames == 30 and 0 < facts.decoded_frames < 30
    assert facts.describe_truncation().startswith(
        f"truncated? the container declares 30 frames, {facts.decoded_frames} decode (a cut file")
    whole = probe_video(str(vf.write_container_video(tmp_path / f"whole{ext}", levels(30), fps=30))).facts
    assert whole.ended and not whole.truncated


def test_one_decoding_thread_gives_the_same_frames_at_the_same_times(tmp_path):
    # The conversion's workers decode with one FFmpeg thread (one worker per core); frame-threaded decoding must not
    # change a pixel or a time, and nonsense thread counts are refused.
    rng = np.random.default_rng(0)
    moving = [np.roll(rng.integers(0, 256, (vf.HEIGHT, vf.WIDTH, 3), np.uint8), 3 * i, axis=1) for i in range(24)]
    path = str(vf.write_container_video(tmp_path / "moving.mp4", moving))

    def read(threads):
        with VideoReader(path, threads=threads) as video:
            frames = []
            while (frame := video.next_frame()).status is not FrameStatus.END:
                frames.append((frame.index, frame.timestamp_us, frame.image))
            return frames

    default, single = read(None), read(1)
    assert len(default) == len(moving) == len(single)
    for (i, t, image), (j, u, other) in zip(default, single):
        assert (i, t) == (j, u) and np.array_equal(image, other)
    with pytest.raises(ValueError, match="threads"):
        VideoReader(path, threads=0)


def test_a_pipe_or_device_named_like_a_video_is_not_a_regular_file(tmp_path):
    # os.path.getsize says 0 for both: they were called zero-byte files. (Opening a pipe to read it would block.)
    pipe = tmp_path / "p.mp4"
    os.mkfifo(pipe)
    device = tmp_path / "d.mp4"
    os.symlink("/dev/zero", device)
    for path in (pipe, device):
        with pytest.raises(VideoError, match="not a regular file"):
            with VideoReader(str(path)):
                pass
