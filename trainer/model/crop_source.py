"""What made a model's crops, and a conversion's: the face stage (a :class:`beam_jobs.faces.stage.FaceStageConfig`) or
the dataset's provided crops.

One reading of both sides, so that ``evaluate`` compares what ``predict`` serves a model (:func:`trained_crops`, read
by :func:`trainer.prediction.crops.served_crops`) with what made the records it scores (:func:`crops_of`, what a
training job on them records in ``model_info.json``): a model trained on a conversion never differs from it.
"""

from __future__ import annotations

from beam_jobs.faces import provided  # Beam-free modules.
from beam_jobs.faces.stage import FaceStageConfig
from tfrecords_schema.image_codec import CODEC_JPEG

# The key of face_stage_differences for a model and data whose crops come from different sources.
CROPS_SOURCE = "crops"


def crops_of(info) -> dict:
    """What made the data's crops, as ``model_info.json`` stores it: ``{"crops": ..., "face_stage": ...}``.

    A conversion of provided crops (``convert --cropped_aligned``) gives ``{"crops": {"source": "provided",
    "crop_size", "jpeg_quality", "codec", "resize"}}``; one through the face stage gives ``{"crops": {"source":
    "face_stage", "codec"}, "face_stage": FaceStageConfig dict}`` (``face_stage`` stays where exports have always had
    it, its ``codec`` too). ``codec`` is how the records stored the crops (``jpeg`` or ``raw``), so that ``predict``
    serves the model crops encoded (and decoded) exactly as it was trained on them.
    """
    face_stage = FaceStageConfig.from_dict({**info.options, "crop_size": info.crop_size})
    if info.options.get("cropped_aligned"):
        return {"crops": {"source": provided.SOURCE_PROVIDED, "crop_size": info.crop_size,
                          "jpeg_quality": face_stage.jpeg_quality, "codec": info.codec, "resize": provided.RESIZE}}
    return {"crops": {"source": provided.SOURCE_FACE_STAGE, "codec": info.codec}, "face_stage": face_stage.to_dict()}


def trained_crops(model_info: dict) -> tuple[str, FaceStageConfig] | None:
    """``(source, stage)`` of the crops ``model_info.json`` says the model was trained on, None for an export that
    records no face stage (made by an older trainer).

    ``source`` is ``provided.SOURCE_FACE_STAGE`` or ``SOURCE_PROVIDED``; for provided crops ``stage`` is the default
    stage at their crop size, quality and codec (only those describe them). Exports made before the codec was recorded
    were trained on JPEG.
    """
    crops = model_info.get("crops") or {"source": provided.SOURCE_FACE_STAGE}
    if crops["source"] == provided.SOURCE_PROVIDED:
        return provided.SOURCE_PROVIDED, FaceStageConfig(crop_size=int(model_info["crop_size"]),
                                                         jpeg_quality=int(crops["jpeg_quality"]),
                                                         codec=crops.get("codec", CODEC_JPEG))
    if "face_stage" not in model_info:
        return None
    return provided.SOURCE_FACE_STAGE, FaceStageConfig.from_dict(model_info["face_stage"])


def face_stage_differences(model_info: dict, info) -> dict[str, dict] | None:
    """How the crops ``predict`` serves the model differ from the crops of the data (``info``):
    ``{option: {"model": value, "data": value}}``, only the options that change a crop
    (:meth:`FaceStageConfig.crop_differences`); ``{"crops": {"model": source, "data": source}}`` where one side has
    provided crops and the other the face stage; ``{}`` where they are cut alike; None where the export records no face
    stage."""
    trained = trained_crops(model_info)
    if trained is None:
        return None
    (model_source, model_stage), (data_source, data_stage) = trained, trained_crops({"crop_size": info.crop_size,
                                                                                      **crops_of(info)})
    if model_source != data_source:
        return {CROPS_SOURCE: {"model": model_source, "data": data_source}}
    return {name: {"model": model, "data": data}
            for name, (model, data) in model_stage.crop_differences(data_stage).items()}
