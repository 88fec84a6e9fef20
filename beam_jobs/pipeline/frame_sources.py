"""The two frame sources of a track: its video through the face stage, or the dataset's provided crops.

No Apache Beam import at module level (Beam's ``FileSystems`` reads provided crops, from any
store, and is imported when used). A source walks the track's annotation lines in order, builds clips with
:class:`beam_jobs.pipeline.clips.ClipBuilder` and yields one kind of value, :class:`SourceItem`: a clip that
filled (with what the face stage did on its labelled frames), a frame of the video that did not decode
(left out of its clip, no later frame moves into its place), or a note about one frame (a dead letter
that costs no labelled frame). Once the iteration ends, :attr:`FrameSource.frames_read` says how many
frames the media gave, so annotation lines past the end of the video can be counted, and (decoded video)
:attr:`FrameSource.stream` what reading it found: rotation, variable frame rate, a truncated file.

Frames whose clip holds no valid label go through the face stage without a crop being cut (a frame's crop depends
on the video alone, as in `affectstream predict`); frames after the last written clip are only counted.

Example:
    source = open_frame_source(track, labels, face=FaceStageConfig(), clip_length=64,
                               dataset_name="abaw", bucketer=Bucketer("expression", label_names))
    for item in source:
        if item.clip is not None: ...         # a ClipRecord; item.faces counts its labelled frames by face status
        if item.undecodable: ...              # frame item.undecodable did not decode: not written
        if item.dead_letter is not None: ...  # e.g. an unreadable provided crop
    beyond = labels.num_frames - source.frames_read
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
from collections.abc import Iterator

from beam_jobs.faces import provided
from beam_jobs.faces import stage as faces_lib
from beam_jobs.media.video import (
    DEFAULT_FPS,
    FrameStatus,
    StreamFacts,
    VideoError,
    VideoReader,
    frame_timestamp_us,
)
from beam_jobs.pipeline.clips import Bucketer, ClipBuilder
from beam_jobs.sources.base import DROP_UNDECLARED_FRAMES, MAX_SEGMENT_SECONDS, DeadLetter, TrackLabels, TrackSpec
from tfrecords_schema import ClipRecord

DROP_UNREADABLE_CROP = "unreadable_crop"  # Dead-letter reason: a provided crop that does not decode.
DROP_NO_PROVIDED_CROP = "no_provided_crop"  # A note: a track whose crops folder holds none of its frames' crops.


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """What a frame source yields, in stream order.

    Attributes:
        clip: A clip that filled (or the track's last, shorter clip), else None.
        faces: With a clip from decoded video: ``{face stage status: frames}`` over the clip's valid
            labelled frames (:data:`beam_jobs.faces.stage.FACE_STATUSES`); else None.
        undecodable: The 1-based index of a frame whose clip has a valid label but which did not decode
            (it is in no clip; its labelled frame is lost with ``decode_error``), else 0.
        dead_letter: A problem with one frame that is still written (e.g. without a face), else
            None. It costs no labelled frame (``frames`` is 0).
    """

    clip: ClipRecord | None = None
    faces: dict[str, int] | None = None
    undecodable: int = 0
    dead_letter: DeadLetter | None = None


class FrameSource(abc.ABC):
    """The frames of one track, turned into clips.

    Args:
        track: The subject track.
        labels: Its labels (row ``i`` = frame ``i + 1``).
        face: The face stage (crop size, codec and JPEG quality, detector settings).
        clip_length: Frames per clip.
        dataset_name: Adapter name stored in each record.
        bucketer: The rebalancing bucketer.
    """

    def __init__(self, track: TrackSpec, labels: TrackLabels, face: faces_lib.FaceStageConfig, clip_length: int,
                 dataset_name: str, bucketer: Bucketer):
        self.track = track
        self.labels = labels
        self.face = face
        self.clip_length = clip_length
        self.dataset_name = dataset_name
        self.bucketer = bucketer
        self.frames_read = 0  # Frames the media gave; final once the iteration has ended.
        self.stream: StreamFacts | None = None  # Decoded video: what reading it found (rotation, VFR, truncation).

    def _builder(self, fps: float) -> ClipBuilder:
        return ClipBuilder(self.track, self.labels, self.clip_length, self.dataset_name, fps, self.bucketer,
                           image_format=self.face.codec)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[SourceItem]:
        """Yields the track's clips as they fill, and notes about single frames."""


class DecodedVideo(FrameSource):
    """The track's video, decoded frame by frame and cropped by the face stage.

    The face stage is ``FaceCropper.from_config(face, side=track.side, detector=detector)``. It follows **every**
    decodable frame of the video in order, from frame 1, whether or not the frame's clip is written (a frame whose
    clip holds no valid label goes through the stage without a crop being cut: ``process(crop=False)``), so the crop
    of a frame depends on the video alone: ``affectstream predict`` runs the same stage over every frame and cuts the
    same bytes (tests/test_serving_crops.py). After the last frame whose crop is needed, frames are only counted. A
    frame that does not decode (:attr:`FrameStatus.CORRUPT`) is yielded as ``undecodable`` when its clip is written
    and left out of its clip; the frames after it keep their index.

    Args:
        detector: A ready face detector to reuse (default: a new one, ``face.build_detector()``).
        decoder_threads: FFmpeg decoding threads (None: OpenCV's default; see :class:`VideoReader`).
        (Other arguments: :class:`FrameSource`.)

    Raises (while iterating):
        VideoError: the video cannot be opened or no frame of it decodes.
    """

    def __init__(self, track: TrackSpec, labels: TrackLabels, face: faces_lib.FaceStageConfig, clip_length: int,
                 dataset_name: str, bucketer: Bucketer, detector: faces_lib.Detector | None = None,
                 decoder_threads: int | None = None):
        super().__init__(track, labels, face, clip_length, dataset_name, bucketer)
        self._detector = detector
        self._decoder_threads = decoder_threads

    def __iter__(self) -> Iterator[SourceItem]:
        if self.labels.num_frames == 0:
            # Nothing labelled to write (a video whose frame count could not be read has its rows counted, with their
            # dead letter, already): opening it again would only report it twice.
            return
        cropper = faces_lib.FaceCropper.from_config(self.face, side=self.track.side, detector=self._detector)
        valid = self.labels.valid
        statuses: collections.Counter = collections.Counter()  # Of the open clip's valid frames.
        with VideoReader(self.track.media_path, threads=self._decoder_threads) as video:
            builder = self._builder(video.fps)
            # The last frame of the last clip that is written: the face stage is not needed after it.
            last_needed = max((i for i in range(1, self.labels.num_frames + 1, self.clip_length)
                               if builder.clip_has_valid(i)), default=0) + self.clip_length - 1
            ended = False
            for index in range(1, self.labels.num_frames + 1):
                wanted = builder.clip_has_valid(index)
                frame = video.next_frame(decode=index <= last_needed)
                if frame.status is FrameStatus.END:
                    ended = True
                    break
                if frame.status is FrameStatus.CORRUPT:
                    if not wanted:
                        continue
                    yield SourceItem(undecodable=index)
                    clip = builder.skip(index)
                else:
                    if index > last_needed:
                        continue
                    face = cropper.process(frame.image, crop=wanted)
                    if not wanted:
                        continue
                    if valid[index - 1]:
                        statuses[face.status] += 1
                    clip = builder.add(index, frame.timestamp_us, self.face.encode(face.crop), face.bbox,
                                       face.keypoints)
                if clip is not None:
                    yield SourceItem(clip=clip, faces={status: statuses[status] for status in faces_lib.FACE_STATUSES})
                if index % self.clip_length == 0:
                    statuses.clear()
            clip = builder.flush()
            if clip is not None:
                yield SourceItem(clip=clip, faces={status: statuses[status] for status in faces_lib.FACE_STATUSES})
            self.frames_read = video.frames_read
            if not ended and self.labels.open_end:
                yield from self._undeclared_frames(video)
            self.stream = video.facts()

    def _undeclared_frames(self, video: VideoReader) -> Iterator[SourceItem]:
        """A note when the video goes on after the frames its container declares, which sized labels meant to run to
        its end: they are counted (decoded without colour conversion), not written."""
        extra = 0
        while video.next_frame(decode=False).status is not FrameStatus.END:
            extra += 1
        if extra:
            labelled = self.labels.num_frames
            if video.facts().declared_frames == labelled:
                counted = f"the {labelled} its container declares"
                fix = ", or rewrite the container: ffmpeg -i IN -c copy OUT"
            else:  # No count declared (or an absurd one): counting by decoding stopped at the segment length cap.
                counted = f"the first {labelled} (a count by decoding stops at {MAX_SEGMENT_SECONDS / 3600:g} h)"
                fix = ""
            yield SourceItem(dead_letter=DeadLetter(
                self.track.media_path, DROP_UNDECLARED_FRAMES,
                f"the video holds {extra} frame(s) after {counted}; a row without start/end labels those frames "
                f"only, so these are not written (give start/end times{fix})", 0))


class ProvidedCrops(FrameSource):
    """The dataset's own face crops, ``<track.crops_dir>/00001.jpg`` ... (``--cropped_aligned``).

    A crop is prepared by :func:`beam_jobs.faces.provided.prepare_crop` (the one preparation, which ``affectstream
    predict --cropped_aligned`` shares) and stored with the box of the whole image; a missing crop is a frame without
    a face (blank crop), an unreadable one too, with a dead letter. When the track has its video, its frames give the
    crops' frame rate, presentation times and the decodable length (one pass over the video, decoding without colour
    conversion), and annotation lines past its last frame are not written (``beyond_video_end``); without the video
    (or one that does not open), 30 fps and every annotation line counts as a frame the media gave.
    """

    def __iter__(self) -> Iterator[SourceItem]:
        from apache_beam.io.filesystems import FileSystems  # Crops on gs:// or s3:// too.

        with contextlib.ExitStack() as stack:
            video = self._open_video(stack)
            builder = self._builder(video.fps if video else DEFAULT_FPS)
            blank = self.face.encode(faces_lib.blank_crop(self.face.crop_size))
            written = found = 0
            for index, timestamp_us in self._frames(video):
                if not builder.clip_has_valid(index):
                    continue
                path = provided.crop_file(self.track.crops_dir, index)
                crop, bbox = blank, None
                written += 1
                if FileSystems.exists(path):
                    found += 1
                    with FileSystems.open(path) as f:
                        prepared = provided.prepare_crop(f.read(), self.face.crop_size, self.face.jpeg_quality,
                                                         self.face.codec)
                    if prepared is None:
                        yield SourceItem(dead_letter=DeadLetter(
                            path, DROP_UNREADABLE_CROP, "provided crop does not decode; frame written without a face",
                            0))
                    else:
                        crop, bbox = prepared, provided.WHOLE_IMAGE_BOX  # The crop is the face.
                clip = builder.add(index, timestamp_us, crop, bbox)
                if clip is not None:
                    yield SourceItem(clip=clip)
            if written and not found:  # Missing crops are frames without a face; none at all is a naming problem.
                yield SourceItem(dead_letter=DeadLetter(
                    self.track.crops_dir, DROP_NO_PROVIDED_CROP,
                    f"none of the {written} frames written has its crop in the folder (crops are named "
                    f"{provided.CROP_NAME.format(index=1)}, ...): all are written without a face", 0))
            clip = builder.flush()
            if clip is not None:
                yield SourceItem(clip=clip)
            if video is not None:
                self.stream = video.facts()

    def _open_video(self, stack: contextlib.ExitStack) -> VideoReader | None:
        """The track's video, open, or None when it has none or it does not open (the crops are then converted)."""
        if not self.track.media_path:
            return None
        try:
            return stack.enter_context(VideoReader(self.track.media_path))
        except (VideoError, OSError):
            return None

    def _frames(self, video: VideoReader | None) -> Iterator[tuple[int, int]]:
        """``(index, presentation time)`` of the frames crops are written for, up to the annotation's last line."""
        last = self.labels.num_frames
        if video is None:
            self.frames_read = last
            yield from ((index, frame_timestamp_us(index, DEFAULT_FPS)) for index in range(1, last + 1))
            return
        while (frame := video.next_frame(decode=False)).status is not FrameStatus.END and frame.index <= last:
            self.frames_read = frame.index
            yield frame.index, frame.timestamp_us


def open_frame_source(track: TrackSpec, labels: TrackLabels, face: faces_lib.FaceStageConfig, clip_length: int,
                      dataset_name: str, bucketer: Bucketer, detector: faces_lib.Detector | None = None,
                      decoder_threads: int | None = None) -> FrameSource:
    """The frame source of a track: its provided crops when it has a crops folder, else its decoded video.

    Args:
        detector: A ready detector for the face stage (decoded video only).
        decoder_threads: FFmpeg decoding threads of the decoded video (None: OpenCV's default).
        (Other arguments: :class:`FrameSource`.)
    """
    if track.crops_dir:
        return ProvidedCrops(track, labels, face, clip_length, dataset_name, bucketer)
    return DecodedVideo(track, labels, face, clip_length, dataset_name, bucketer, detector=detector,
                        decoder_threads=decoder_threads)
