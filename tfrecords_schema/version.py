"""Version of the on-disk format (records and dataset_info.json)."""

# Bump when a key, a dtype or the meaning of a value changes; readers refuse versions not in READABLE_VERSIONS.
# 1: boxes only. 2: adds the face keypoints per frame (``region/point/x``, ``region/point/y``) and the
# ``faces`` block of each split in dataset_info.json. 3: composite buckets (``bucket_by tasks``, the default:
# ``clip/label/index`` indexes the clip's class for every task) and, per split, each bucket's class per task,
# its per-task class histograms and the labelled frames per task (``bucket_classes``, ``bucket_class_frames``,
# ``task_frames``, ``bucket_task_frames``). 4: the crops' codec: each record's ``image/format`` (``jpeg`` or ``raw``,
# the crop's uint8 RGB pixels) and ``options.codec`` in dataset_info.json (convert --codec).
SCHEMA_VERSION = 4
# Versions 1-3 read as version 4 with JPEG crops and without keypoints (1), ``faces`` (1) or the per-bucket task
# blocks (1, 2).
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4)
