"""The on-disk format shared by the Beam job and the trainer: keys, clip codec, dataset info.

Both sides import only this package to talk to each other; it imports neither.
"""

from tfrecords_schema import buckets, image_codec, keys
from tfrecords_schema.clip_codec import ClipRecord, decode_clip, encode_clip, make_clip_parser
from tfrecords_schema.dataset_info import (
    DATASET_INFO_FILENAME,
    SPLIT_SELECTION,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VALIDATION,
    SPLITS,
    TASK_ACTION_UNITS,
    TASK_EXPRESSION,
    TASK_VALENCE_AROUSAL,
    TASKS,
    Accounting,
    DatasetInfo,
    DatasetInfoError,
    ShardInfo,
    SplitInfo,
    bucket_token,
    join_path,
    read_dataset_info,
    shard_basename,
    write_dataset_info,
)
from tfrecords_schema.tasks import (
    HEAD_ACTION_UNITS,
    HEAD_EXPRESSION,
    HEAD_OF_TASK,
    HEAD_VALENCE_AROUSAL,
    HEADS,
    TASK_MULTI,
    TASK_OF_HEAD,
)
from tfrecords_schema.version import SCHEMA_VERSION

__all__ = [
    "buckets", "image_codec", "keys", "ClipRecord", "decode_clip", "encode_clip", "make_clip_parser",
    "DATASET_INFO_FILENAME", "SPLITS", "SPLIT_SELECTION", "SPLIT_TEST", "SPLIT_TRAIN", "SPLIT_VALIDATION", "TASKS",
    "TASK_ACTION_UNITS", "TASK_EXPRESSION",
    "TASK_VALENCE_AROUSAL", "Accounting", "DatasetInfo", "DatasetInfoError", "ShardInfo", "SplitInfo",
    "bucket_token", "join_path", "read_dataset_info", "shard_basename", "write_dataset_info", "SCHEMA_VERSION",
    "HEAD_ACTION_UNITS", "HEAD_EXPRESSION", "HEAD_OF_TASK", "HEAD_VALENCE_AROUSAL", "HEADS", "TASK_MULTI", "TASK_OF_HEAD",
]
