"""The two frame sources of a track: its video through the face stage, or the dataset's provided crops.

No Apache Beam import at module level (Beam's ``FileSystems`` reads provided crops, from any
store, and is imported when used). A source walks the track's annotation lines in order, builds clips with
:class:`beam_jobs.pipeline.clips.ClipBuilder` and yields one kind of value, :class:`SourceItem`: a clip that
filled (with what the face stage did on its labelled frames), a frame of the video that did not decode
(left out of its clip, no later frame moves into its place), or a note about one frame (a dead letter
that costs no labelled frame). Once the iteration ends, :attr:`FrameSource.frames_read` says how many
frames the media gave, so annotation lines past the end of the video can be counted, and (decoded video)
:attr:`FrameSource.stream` what reading it found: rotation, variable frame rate, a truncated file.

Frames whose clip holds no valid label are skipped without converting their pixels.

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
import dataclasses
from collections.abc import Iterator

from beam_jobs.faces import stage as faces_lib
from beam_jobs.media.video import (
    DEFAULT_FPS,
    FrameStatus,
    StreamFacts,
    VideoError,
    VideoReader,
    frame_timestamp_us,
    probe_video,
)
from beam_jobs.pipeline.clips import Bucketer, ClipBuilder
from beam_jobs.sources.base import DeadLetter, TrackLabels, TrackSpec
from tfrecords_schema import ClipRecord, join_path

DROP_UNREADABLE_CROP = "unreadable_crop"  # Dead-letter reason: a provided crop that does not decode.
PROVIDED_CROP_NAME = "{index:05d}.jpg"  # File of frame ``index`` (1-based) in a track's crops folder.


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
        face: The face stage (crop size, JPEG quality, detector settings).
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
        return ClipBuilder(self.track, self.labels, self.clip_length, self.dataset_name, fps, self.bucketer)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[SourceItem]:
        """Yields the track's clips as they fill, and notes about single frames."""


class DecodedVideo(FrameSource):
    """The track's video, decoded frame by frame and cropped by the face stage.

    The face stage is ``FaceCropper.from_config(face, side=track.side, detector=detector)``;
    after skipped frames (clips without a valid label) it starts over, as after a cut. A frame
    that does not decode (:attr:`FrameStatus.CORRUPT`) is yielded as ``undecodable`` and left
    out of its clip; the frames after it keep their index.

    Args:
        detector: A ready face detector to reuse (default: a new one of ``face.detector``).
        (Other arguments: :class:`FrameSource`.)

    Raises (while iterating):
        VideoError: the video cannot be opened or no frame of it decodes.
    """

    def __init__(self, track: TrackSpec, labels: TrackLabels, face: faces_lib.FaceStageConfig, clip_length: int,
                 dataset_name: str, bucketer: Bucketer, detector: faces_lib.Detector | None = None):
        super().__init__(track, labels, face, clip_length, dataset_name, bucketer)
        self._detector = detector

    def __iter__(self) -> Iterator[SourceItem]:
        cropper = faces_lib.FaceCropper.from_config(self.face, side=self.track.side, detector=self._detector)
        valid = self.labels.valid
        statuses: collections.Counter = collections.Counter()  # Of the open clip's valid frames.
        with VideoReader(self.track.media_path) as video:
            builder = self._builder(video.fps)
            skipping = False
            for index in range(1, self.labels.num_frames + 1):
                wanted = builder.clip_has_valid(index)
                frame = video.next_frame(decode=wanted)
                if frame.status is FrameStatus.END:
                    break
                if not wanted:
                    skipping = True
                    continue
                if skipping:
                    cropper.reset()
                    skipping = False
                if frame.status is FrameStatus.CORRUPT:
                    yield SourceItem(undecodable=index)
                    clip = builder.skip(index)
                else:
                    face = cropper.process(frame.image)
                    if valid[index - 1]:
                        statuses[face.status] += 1
                    clip = builder.add(index, frame.timestamp_us,
                                       faces_lib.encode_jpeg(face.crop, self.face.jpeg_quality), face.bbox,
                                       face.keypoints)
                if clip is not None:
                    yield SourceItem(clip=clip, faces={status: statuses[status] for status in faces_lib.FACE_STATUSES})
                if index % self.clip_length == 0:
                    statuses.clear()
            clip = builder.flush()
            if clip is not None:
                yield SourceItem(clip=clip, faces={status: statuses[status] for status in faces_lib.FACE_STATUSES})
            self.frames_read = video.frames_read
            self.stream = video.facts()


class ProvidedCrops(FrameSource):
    """The dataset's own face crops, ``<track.crops_dir>/00001.jpg`` ... (``--cropped_aligned``).

    A crop is resized to the crop size and stored with the box of the whole image; a missing
    crop is a frame without a face (blank crop), an unreadable one too, with a dead letter.
    When the track has its video, its frame rate and decodable length come from it (one pass
    over the video, decoding without colour conversion), and annotation lines past its last
    frame are not written (``beyond_video_end``); without the video, 30 fps and every
    annotation line counts as a frame the media gave.
    """

    def __iter__(self) -> Iterator[SourceItem]:
        from apache_beam.io.filesystems import FileSystems  # Crops on gs:// or s3:// too.

        fps, length = self._video_length()
        builder = self._builder(fps)
        blank = faces_lib.encode_jpeg(faces_lib.blank_crop(self.face.crop_size), self.face.jpeg_quality)
        for index in range(1, length + 1):
            if not builder.clip_has_valid(index):
                continue
            path = join_path(self.track.crops_dir, PROVIDED_CROP_NAME.format(index=index))
            image = None
            if FileSystems.exists(path):
                with FileSystems.open(path) as f:
                    image = faces_lib.decode_image(f.read())
                if image is None:
                    yield SourceItem(dead_letter=DeadLetter(
                        path, DROP_UNREADABLE_CROP, "provided crop does not decode; frame written without a face", 0))
            if image is None:
                jpeg, bbox = blank, None
            else:
                h, w = image.shape[:2]
                crop = faces_lib.square_crop(image, (0, 0, w, h), self.face.crop_size, margin=1.0)
                jpeg, bbox = faces_lib.encode_jpeg(crop, self.face.jpeg_quality), (0.0, 0.0, 1.0, 1.0)  # The crop is the face.
            clip = builder.add(index, frame_timestamp_us(index, fps), jpeg, bbox)
            if clip is not None:
                yield SourceItem(clip=clip)
        clip = builder.flush()
        if clip is not None:
            yield SourceItem(clip=clip)
        self.frames_read = length

    def _video_length(self) -> tuple[float, int]:
        """(fps, frames to read): from the track's video when it has one that opens, else (30 fps, every line)."""
        if self.track.media_path:
            try:
                probe = probe_video(self.track.media_path)
            except (VideoError, OSError):  # As without a video: the crops are what is converted.
                return DEFAULT_FPS, self.labels.num_frames
            return probe.fps, min(probe.frames, self.labels.num_frames)
        return DEFAULT_FPS, self.labels.num_frames


def open_frame_source(track: TrackSpec, labels: TrackLabels, face: faces_lib.FaceStageConfig, clip_length: int,
                      dataset_name: str, bucketer: Bucketer, detector: faces_lib.Detector | None = None) -> FrameSource:
    """The frame source of a track: its provided crops when it has a crops folder, else its decoded video.

    Args:
        detector: A ready detector for the face stage (decoded video only).
        (Other arguments: :class:`FrameSource`.)
    """
    if track.crops_dir:
        return ProvidedCrops(track, labels, face, clip_length, dataset_name, bucketer)
    return DecodedVideo(track, labels, face, clip_length, dataset_name, bucketer, detector=detector)
