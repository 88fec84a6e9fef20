"""Feature keys of an AffectStream clip record (a `tf.train.SequenceExample`).

Names follow MediaPipe MediaSequence where it has one, so its readers (DMVR,
TF Model Garden video loaders) can read our records. Every key used by the
Beam job or the trainer is declared here and nowhere else.
"""

# --- Context features: one value per clip. -----------------------------------
EXAMPLE_ID = "example/id"  # bytes: unique clip id, "<split>/<media_id>/<first frame:06d>".
DATASET_NAME = "example/dataset_name"  # bytes: the dataset adapter's name, e.g. "abaw".
MEDIA_ID = "clip/media_id"  # bytes: the annotation (subject track) name, e.g. "10-60-1280x720_right".
DATA_PATH = "clip/data_path"  # bytes: media path relative to the input root.
FRAME_RATE = "clip/frame_rate"  # float: frames per second of the source video.
CLIP_LABEL_INDEX = "clip/label/index"  # int64: the clip's rebalancing bucket (index into bucket names).
SCHEMA_VERSION = "schema/version"  # int64: version of this record layout.
IMAGE_FORMAT = "image/format"  # bytes: how image/encoded is stored, "jpeg" or "raw" (image_codec). (Version 4.)

# --- Feature lists: one entry per frame, in time order. ----------------------
IMAGE_ENCODED = "image/encoded"  # bytes: the face crop as image/format says (blank when no face was ever seen).
IMAGE_FRAME_INDEX = "image/frame_index"  # int64: 1-based frame number = annotation line number.
IMAGE_TIMESTAMP = "image/timestamp"  # int64: frame time in microseconds from the video start.
BBOX_YMIN = "region/bbox/ymin"  # float: face box top, normalised to the full frame; empty = no face.
BBOX_XMIN = "region/bbox/xmin"  # float: face box left, normalised; empty = no face.
BBOX_YMAX = "region/bbox/ymax"  # float: face box bottom, normalised; empty = no face.
BBOX_XMAX = "region/bbox/xmax"  # float: face box right, normalised; empty = no face.
POINT_X = "region/point/x"  # floats: face keypoint x coordinates, normalised; empty = no face. (Version 2.)
POINT_Y = "region/point/y"  # floats: face keypoint y coordinates, normalised; empty = no face. (Version 2.)
LABEL_EXPRESSION = "label/expression"  # int64: expression class, EXPRESSION_INVALID when unlabelled.
LABEL_VALENCE_AROUSAL = "label/valence_arousal"  # 2 floats: valence, arousal in [-1, 1]; VA_INVALID when unlabelled.
LABEL_ACTION_UNITS = "label/action_units"  # int64 x num AUs: 0/1 per AU; AU_INVALID when unlabelled.

BBOX_KEYS = (BBOX_YMIN, BBOX_XMIN, BBOX_YMAX, BBOX_XMAX)  # the box coordinates in MediaSequence order.
POINT_KEYS = (POINT_X, POINT_Y)  # the keypoint coordinates, in the order of ClipRecord.keypoints' last axis.

# --- Invalid-label markers (the Aff-Wild2 conventions). ----------------------
EXPRESSION_INVALID = -1  # marks a frame with no expression label.
VA_INVALID = -5.0  # marks a frame with no valence/arousal label.
AU_INVALID = -1  # marks a frame with no action-unit labels.
