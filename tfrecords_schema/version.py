"""Version of the on-disk format (records and dataset_info.json)."""

# Bump when a key, a dtype or the meaning of a value changes; readers refuse versions not in READABLE_VERSIONS.
# 1: boxes only. 2: adds the face keypoints per frame (``region/point/x``, ``region/point/y``) and the
# ``faces`` block of each split in dataset_info.json.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)  # Version 1 reads as version 2 without keypoints (and without ``faces``).
