"""The crops a video is served, frame by frame: the conversion's face stage, or the dataset's provided crops.

Both sources give one :class:`FrameCrop` per frame index of the video, in order, each crop encoded exactly as the
conversion stores it (JPEG, or raw pixels: the codec the export's records had; the model then decodes it as the trainer
reads records):

* :class:`FaceStageCrops`: the face stage of the export (:class:`beam_jobs.faces.stage.FaceCropper`) over every
  decodable frame, the same way the conversion runs it (every frame, from frame 1, no reset), so a frame gets the
  crop its record holds. A frame that does not decode keeps its place with the previous crop and no face.
* :class:`ProvidedCrops`: ``DIR/<track>/00001.jpg`` ... prepared by :func:`beam_jobs.faces.provided.prepare_crop`,
  the conversion's own preparation; a frame without a crop file, or with one that does not decode, gets the blank
  crop and no face, as in the records. The video gives the frames (its decodable length and timestamps); crop files
  past its end are counted, not predicted.

:func:`served_crops` reads what ``model_info.json`` says the model was trained on (``crops``; older exports record
only ``face_stage``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

# (served_crops reads the source through trainer.model.crop_source; predict takes these names from here)
from beam_jobs.faces.provided import SOURCE_FACE_STAGE as CROPS_FACE_STAGE  # noqa: F401
from beam_jobs.faces.provided import SOURCE_PROVIDED as CROPS_PROVIDED  # noqa: F401
from tfrecords_schema.image_codec import CODEC_JPEG, CODECS
from trainer.prediction.errors import PredictError

MISSING_FACE_STAGE = "export made before face_stage was recorded; re-export"


@dataclasses.dataclass(frozen=True)
class FrameCrop:
    """One frame of a video as the model is served it.

    Attributes:
        index: 1-based frame index (= annotation line).
        timestamp_us: Frame time.
        crop: The crop, encoded as the conversion stores it (the codec of ``ServedCrops``).
        bbox: Normalised ``(ymin, xmin, ymax, xmax)`` of the face, None without one.
        decoded: Whether the frame's pixels were read: the video's frame decoded (face stage); always with provided
            crops, whose crop file is the frame's pixels whether or not the video's frame decodes (a missing or
            unreadable crop is served blank, without a face), as the conversion writes and evaluate scores it.
    """

    index: int
    timestamp_us: int
    crop: bytes
    bbox: tuple[float, float, float, float] | None
    decoded: bool


@dataclasses.dataclass(frozen=True)
class ServedCrops:
    """What the export's crops were: ``source`` (:data:`CROPS_FACE_STAGE` or :data:`CROPS_PROVIDED`), the face
    stage (a :class:`beam_jobs.faces.stage.FaceStageConfig`; for provided crops the default stage at the model's
    crop size, codec and quality, used only when the user asks for the detector anyway), the crop size, the JPEG quality
    and the codec (``jpeg`` or ``raw``: :mod:`tfrecords_schema.image_codec`; exports made before the codec was recorded
    were trained on JPEG)."""

    source: str
    face_stage: object
    crop_size: int
    jpeg_quality: int
    codec: str


def served_crops(model_info: dict, model_dir: str) -> ServedCrops:
    """The crops the model was trained on, from its ``model_info.json``.

    Raises:
        PredictError: an export that records neither (made by an older trainer), or whose crop size disagrees.
    """
    from trainer.model.crop_source import trained_crops

    crop_size = int(model_info["crop_size"])
    crops = model_info.get("crops") or {}
    trained = trained_crops(model_info)
    if trained is None:
        raise PredictError(f"{model_dir}: {MISSING_FACE_STAGE} (the face stage of the training crops is unknown, "
                           f"so prediction cannot rebuild it)")
    source, stage = trained
    if stage.crop_size != crop_size or int(crops.get("crop_size", crop_size)) != crop_size:
        raise PredictError(f"{model_dir}: the crops' size {stage.crop_size} != the model's crop_size {crop_size}")
    if stage.codec not in CODECS:
        raise PredictError(f"{model_dir}: unknown crop codec {stage.codec!r} (this AffectStream reads "
                           f"{', '.join(CODECS)})")
    return ServedCrops(source, stage, crop_size, stage.jpeg_quality, stage.codec)


class FaceStageCrops:
    """The face stage over every frame of one video (see the module docstring).

    Attributes (final once iterated):
        fps: The video's frame rate.
        stream: What reading the video found out (:class:`beam_jobs.media.video.StreamFacts`: rotation, variable
            frame rate, truncation).
    """

    def __init__(self, path: str, face_stage, side: str | None, decoder_threads: int | None = None):
        self.path, self.face_stage, self.side, self.decoder_threads = path, face_stage, side, decoder_threads
        self.fps, self.stream = 0.0, None

    def __iter__(self) -> Iterator[FrameCrop]:
        from beam_jobs.faces.stage import FaceCropper, blank_crop
        from beam_jobs.media.video import VideoReader, interpolated_timestamps_us

        stage = self.face_stage
        cropper = FaceCropper.from_config(stage, side=self.side)
        last = stage.encode(blank_crop(stage.crop_size))
        with VideoReader(self.path, threads=self.decoder_threads) as video:
            self.fps = video.fps
            expected, before = 1, None
            for index, timestamp_us, image in video.frames():
                # Frames the decoder lost: the same crop, no face, at times between their neighbours'.
                for missing, stamp in enumerate(interpolated_timestamps_us(before, timestamp_us, index - expected,
                                                                           video.fps), start=expected):
                    yield FrameCrop(missing, stamp, last, None, False)
                face = cropper.process(image)
                last = stage.encode(face.crop)
                yield FrameCrop(index, timestamp_us, last, face.bbox, True)
                expected, before = index + 1, timestamp_us
            self.stream = video.facts()


class ProvidedCrops:
    """A track's provided crops over the frames of its video (see the module docstring).

    Attributes (final once iterated):
        fps: The video's frame rate.
        stream: What reading the video found out (:class:`beam_jobs.media.video.StreamFacts`).
        missing: Frames without a crop file.
        unreadable: Crop files that do not decode.
        past_video_end: Crop files of frames past the video's decodable end (not predicted).
        video_not_decoded: Frames whose video frame did not decode (their crops are served: the conversion writes
            them too).
    """

    def __init__(self, path: str, crops_dir: str, crop_size: int, jpeg_quality: int, codec: str = CODEC_JPEG):
        self.path, self.crops_dir, self.crop_size, self.jpeg_quality = path, crops_dir, crop_size, jpeg_quality
        self.codec = codec
        self.fps, self.stream = 0.0, None
        self.missing = self.unreadable = self.past_video_end = self.video_not_decoded = 0

    def __iter__(self) -> Iterator[FrameCrop]:
        from beam_jobs.faces import provided
        from beam_jobs.faces.stage import blank_crop, encode_crop
        from beam_jobs.media.video import FrameStatus, VideoReader
        from tfrecords_schema import storage

        blank = encode_crop(blank_crop(self.crop_size), self.codec, self.jpeg_quality)
        with VideoReader(self.path) as video:
            self.fps = video.fps
            while (frame := video.next_frame(decode=False)).status is not FrameStatus.END:
                path = provided.crop_file(self.crops_dir, frame.index)
                crop, bbox = blank, None
                files = storage.gfile(path)
                if files.exists(path):
                    with files.GFile(path, "rb") as f:
                        prepared = provided.prepare_crop(f.read(), self.crop_size, self.jpeg_quality, self.codec)
                    if prepared is None:
                        self.unreadable += 1
                    else:
                        crop, bbox = prepared, provided.WHOLE_IMAGE_BOX
                else:
                    self.missing += 1
                self.video_not_decoded += frame.status is not FrameStatus.DECODED  # (its crop is served all the same)
                yield FrameCrop(frame.index, frame.timestamp_us, crop, bbox, True)
            last = video.frames_read
            self.stream = video.facts()
        self.past_video_end = sum(1 for name in storage.gfile(self.crops_dir).listdir(self.crops_dir)
                                  if _crop_index(name) is not None and _crop_index(name) > last)


def _crop_index(name: str) -> int | None:
    """The frame index of a crop file name (``00012.jpg`` → 12), None for other files."""
    stem, _, ext = name.rpartition(".")
    return int(stem) if ext.lower() == "jpg" and stem.isdigit() else None


def crop_source(track, local: str, served: ServedCrops, decoder_threads: int | None = None):
    """The crops of one track (a :class:`trainer.prediction.videos.Track`) whose video is at ``local``: its provided
    crops when it has a crops folder, else the face stage (decoding with ``decoder_threads`` FFmpeg threads; None:
    OpenCV's default, one per core)."""
    if track.crops_dir:
        return ProvidedCrops(local, track.crops_dir, served.crop_size, served.jpeg_quality, served.codec)
    return FaceStageCrops(local, served.face_stage, track.side, decoder_threads)


def crop_counts(source) -> dict:
    """What a provided-crops track lacked: frames without a crop file, unreadable crops, crops past the video end, and
    video frames that did not decode (served their crops)."""
    if not isinstance(source, ProvidedCrops):
        return {}
    return {"crops_missing": source.missing, "crops_unreadable": source.unreadable,
            "crops_past_video_end": source.past_video_end, "video_frames_not_decoded": source.video_not_decoded}
