"""A dataset's own face crops (ABAW's ``cropped_aligned``): where they are, and how a crop is prepared.

The one preparation of a provided crop, used by the conversion (``convert --cropped_aligned``) and by
``affectstream predict --cropped_aligned``, so a model trained on provided crops is served them prepared exactly as
its records hold them: the image decoded, its largest centred square (the whole of an ABAW crop, which is square)
resized to the crop size (:func:`beam_jobs.faces.align.square_crop`, area interpolation when shrinking), then
encoded as the face stage stores crops (JPEG at its quality, or raw pixels: :func:`beam_jobs.faces.align.encode_crop`). A crop that does not decode gives None: the frame has no face.

Layout: ``DIR/<track>/00001.jpg`` is frame 1 of track ``<track>`` (the annotation name: ``<video>`` or
``<video>_left`` / ``<video>_right`` for two people sharing one video).
"""

from __future__ import annotations

from beam_jobs.faces.align import decode_image, encode_crop, square_crop

# What made a model's crops, as model_info.json["crops"]["source"] says: the conversion's face stage, or these.
SOURCE_FACE_STAGE = "face_stage"
SOURCE_PROVIDED = "provided"
CROP_NAME = "{index:05d}.jpg"  # File of frame ``index`` (1-based) in a track's crops folder.
# How model_info.json describes the preparation (an export trained on provided crops records it).
RESIZE = "the whole crop's largest centred square, resized to crop_size (square_crop, margin 1.0), then JPEG"
# (the text exports have always recorded; the crops record's ``codec`` says how they are stored)
WHOLE_IMAGE_BOX = (0.0, 0.0, 1.0, 1.0)  # A provided crop is the face: its box is the whole image.


def crop_file(crops_dir: str, index: int) -> str:
    """Path of frame ``index``'s crop in a track's crops folder (local or a URL)."""
    from tfrecords_schema import join_path

    return join_path(crops_dir, CROP_NAME.format(index=index))


def prepare_crop(data: bytes, crop_size: int, jpeg_quality: int, codec: str = "jpeg") -> bytes | None:
    """The stored crop (``codec``: JPEG at ``jpeg_quality``, or raw pixels) of one provided crop, or None when ``data``
    does not decode."""
    image = decode_image(data)
    if image is None:
        return None
    h, w = image.shape[:2]
    return encode_crop(square_crop(image, (0, 0, w, h), crop_size, margin=1.0), codec, jpeg_quality)
