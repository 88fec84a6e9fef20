"""The values the trainer's choice options accept, declared without importing TensorFlow or Keras.

``python -m trainer.train --help`` (and ``affectstream train --help``) lists them, so they live here,
where importing them costs nothing; the modules that use them (the model, the training job, the input) import
them from here.
"""

from __future__ import annotations

from tfrecords_schema.tasks import TASK_MULTI, TASKS

TASK_CHOICES = (*TASKS, TASK_MULTI)  # the --task values: each task, or every task of the data
BACKBONES = ("simple_cnn", "mobilenet_v3_small", "efficientnet_b0")
RNNS = ("gru", "lstm")  # the recurrent temporal heads (a stack of --rnn_units layers)
TEMPORAL_GRU, TEMPORAL_TCN, TEMPORAL_TRANSFORMER = "gru", "tcn", "transformer"
# --temporal: what runs over time on the per-frame features (trainer.model.temporal); gru is the paper's stack.
TEMPORAL_HEADS = (*RNNS, TEMPORAL_TCN, TEMPORAL_TRANSFORMER)
STRATEGY_MULTI_WORKER = "multi_worker"
STRATEGIES = ("auto", "one_device", "mirrored", STRATEGY_MULTI_WORKER)
LR_SCHEDULES = ("constant", "cosine")

STAGE_END_TO_END = "end_to_end"  # --stage: the CNN and the recurrent stack together (trainer.training.stages)
STAGE_FRAMES = "frames"  # the CNN alone, per frame
STAGE_SEQUENCE = "sequence"  # the recurrent stack on the frozen CNN's features
STAGES = (STAGE_END_TO_END, STAGE_FRAMES, STAGE_SEQUENCE)
JIT_CHOICES = ("auto", "on", "off")
# --precision: Keras dtype policies of the trained model (variables float32 in every one; the losses, CCC and metrics
# are computed in float32). Loss scaling for float16 only.
PRECISION_FLOAT32 = "float32"
PRECISION_FLOAT16 = "mixed_float16"
PRECISION_BFLOAT16 = "mixed_bfloat16"
PRECISIONS = (PRECISION_FLOAT32, PRECISION_FLOAT16, PRECISION_BFLOAT16)
OPTIMIZER_CHOICES = ("adam", "sgd")
IMPORTED_OUTPUTS = ("probabilities", "logits")  # import-model --model_outputs: what the network's output is
CHANNEL_ORDERS = ("rgb", "bgr")  # import-model --channel_order
