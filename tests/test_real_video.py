"""A real video that nobody on the team made, through real face detection in the Beam job.

The footage is ``Megamind.avi`` from Debian's ``opencv-doc`` package (fetched with
``apt-get download`` when not installed; CI refreshes the package lists first). Its
labels are placeholders: the point is detection, cropping and accounting on real
frames, not learning.
"""

import contextlib
import io
import shutil

import numpy as np
import pytest
import tensorflow as tf

from affectstream import real_videos
from beam_jobs import convert
from tfrecords_schema import decode_clip, read_dataset_info


@pytest.fixture(scope="module")
def megamind():
    if shutil.which("apt-get") is None and not real_videos._installed("/"):
        pytest.skip("no apt-get here to fetch Debian's opencv-doc sample video")
    return real_videos.opencv_sample_videos()[0]


def test_real_trailer_converts_with_faces_found_in_almost_every_frame(megamind, tmp_path):
    videos, annotations, frames = real_videos.write_placeholder_layout(megamind, str(tmp_path / "src"))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = convert.run(["--videos", videos, "--annotations", annotations, "--output", str(out),
                          "--crop_size", "96", "--clip_length", "64", "--detect_every", "3", "--bucket_by", "none",
                          "--runner", "DirectRunner", "--direct_running_mode", "in_memory", "--progress_every", "0"])
    assert rc == 0
    info = read_dataset_info(str(out))
    acc = info.splits["validation"].accounting
    assert frames == 270 and acc.labelled_frames == frames and acc.is_balanced()
    assert acc.written_frames_with_face >= 0.9 * frames  # The trailer shows a face in nearly every frame.
    indices, with_face = [], 0
    for shard in info.splits["validation"].shards:
        for raw in tf.data.TFRecordDataset(str(out / shard.path)):
            clip = decode_clip(raw.numpy())
            indices.extend(clip.frame_index.tolist())
            with_face += int(clip.has_face.sum())
            for image in np.asarray(clip.images, dtype=object)[clip.has_face][:3]:
                crop = tf.io.decode_jpeg(image).numpy()
                assert crop.shape == (96, 96, 3) and crop.std() > 5  # A real picture, not a blank.
    assert sorted(indices) == list(range(1, frames + 1))
    assert with_face == acc.written_frames_with_face
    assert np.all(np.diff(sorted(indices)) == 1)
