"""Training stages (``--stage``): end-to-end, or the paper's two stages (per-frame CNN, then recurrent stack).

* ``end_to_end`` (default): the CNN and the recurrent stack train together on clips of ``--seq_len`` frames.
* ``frames``: the CNN trains alone, per frame: one random frame per sampled clip (sequence length 1, so
  ``--batch_size`` counts frames), the task's heads straight on each frame's CNN features, no recurrent
  layer. Evaluation and the export run it over windows of ``--seq_len`` frames like any model (each frame
  on its own). Rebalancing, augmentation, ``--weights`` and ``--freeze_backbone_epochs`` work as end-to-end.
* ``sequence --init_from JOB``: the CNN of JOB's export (usually a ``frames`` job) is frozen; its per-frame
  features are computed once for every clip of the splits the job reads and written as feature shards
  in ``--job_dir/features/`` (:mod:`trainer.training.features`, :mod:`tfrecords_schema.features`); the recurrent
  stack (``--rnn``, ``--rnn_units``: the paper's GRU 100-100-50 by default) and the heads train on them,
  with the same bucket rebalancing as the clips (the feature shards keep the clip shards' buckets). The
  backbone options (``backbone``, ``cnn_width``, ``feature_dim``) come from JOB. The job exports ONE model,
  JOB's CNN followed by the trained stack, with the same input, outputs and ``model_info.json`` contract as
  an end-to-end export, and its final report scores that model on the images.

A :class:`Stage` gives :func:`trainer.train.train` what differs between them: the trained model, the
training sequence length, the training stream, the per-epoch evaluation data, the layers to freeze, the
fingerprint and the export.
"""

from __future__ import annotations

import dataclasses
import logging

from trainer.common.choices import STAGE_END_TO_END, STAGE_FRAMES, STAGE_SEQUENCE

log = logging.getLogger("trainer.train")


class Stage:
    """End-to-end training (and the base of the other stages).

    Args:
        config: The training options (:class:`trainer.training.config.TrainConfig`).
        plan: The job plan (:class:`trainer.training.plan.JobPlan`: data info, heads, splits).
    """

    trains_on_features = False  # whether :meth:`train_dataset` streams features instead of clips

    def __init__(self, config, plan):
        self.config = config
        self.plan = plan

    @property
    def train_seq_len(self) -> int:
        """Frames per training sequence."""
        return self.config.seq_len

    def model_spec(self):
        """The :class:`trainer.model.spec.ModelSpec` of the exported model."""
        from trainer.training.plan import model_spec_for

        return model_spec_for(self.config, self.plan.info, self.plan.heads)

    def build(self, spec, *, mixed_precision: bool = False):
        """Builds the trained model of ``spec`` (the job's models are all built here)."""
        from trainer.model.build import build_model

        return build_model(spec, mixed_precision=mixed_precision)

    def prepare(self, role, skipped) -> None:
        """Work before the models are built (the sequence stage computes its features here)."""

    def frozen_layers(self, model) -> list:
        """The layers ``--freeze_backbone_epochs`` freezes (none without it)."""
        from trainer.model.build import pretrained_layers

        return pretrained_layers(model, self.model_spec()) if self.config.freeze_backbone_epochs else []

    def fingerprint(self) -> dict:
        """The job fingerprint stored in the checkpoints (:func:`trainer.training.fingerprint.job_fingerprint`)."""
        from trainer.training.fingerprint import job_fingerprint

        return job_fingerprint(self.config, self.plan.info, self.plan.heads)

    def eval_dataset_fn(self, skipped):
        """``split -> dataset`` for the per-epoch evaluation, or None for the clips (the default)."""
        return

    def train_dataset(self, batch_size: int, seed: int, input_context, skipped):
        """The training stream (one replica's): rebalanced clips of :attr:`train_seq_len` frames."""
        from trainer.input import data_service
        from trainer.input.pipeline import make_train_dataset

        config, plan = self.config, self.plan
        return make_train_dataset(
            config.data, plan.info, task=config.task, seq_len=self.train_seq_len, batch_size=batch_size,
            sampling=config.sampling, loss_weighting=config.loss_weighting, class_weights=plan.class_weights,
            seed=seed, augment=config.augment, input_context=input_context, skipped=skipped,
            data_service=config.data_service,
            data_service_job=data_service.job_name(config.job_dir, seed) if config.data_service else None,
        )

    def export_model(self, eval_model):
        """The model to export, given the float32 copy holding the best epoch."""
        return eval_model

    def model_info(self) -> dict:
        """What the stage adds to (or overrides in) ``model_info.json``."""
        return {}

    def close(self, role) -> None:
        """Removes what the stage left in temporary folders."""


class FramesStage(Stage):
    """``--stage frames``: the CNN with per-frame heads, trained on single frames."""

    @property
    def train_seq_len(self) -> int:
        return 1

    def model_spec(self):
        return dataclasses.replace(super().model_spec(), rnn_units=())

    def model_info(self) -> dict:
        return {"rnn": None, "rnn_units": []}


class SequenceStage(Stage):
    """``--stage sequence``: the recurrent stack on the frozen features of ``--init_from``'s CNN."""

    trains_on_features = True

    def __init__(self, config, plan):
        from tfrecords_schema import join_path
        from trainer.common.errors import TrainingError
        from trainer.model.export import MODEL_FILENAME, read_model_info, resolve_model_dir
        from trainer.training.fingerprint import file_sha256

        self.init_dir = resolve_model_dir(config.init_from)
        self.init_info = read_model_info(self.init_dir)
        if int(self.init_info["crop_size"]) != plan.info.crop_size:
            raise TrainingError(f"--init_from {config.init_from} was trained on {self.init_info['crop_size']} px "
                                f"crops, but {config.data} holds {plan.info.crop_size} px crops: train the sequence "
                                f"stage on data converted at {self.init_info['crop_size']} px, or give --init_from a "
                                f"job trained on {plan.info.crop_size} px crops")
        init_config = self.init_info["train_config"]
        config = dataclasses.replace(config, backbone=init_config["backbone"], cnn_width=init_config["cnn_width"],
                                     feature_dim=init_config["feature_dim"])
        super().__init__(config, plan)
        self.model_path = join_path(self.init_dir, MODEL_FILENAME)
        self.backbone_sha256 = file_sha256(self.model_path)
        self.features_dir = None
        self.index = None
        self._backbone = None
        log.info("sequence stage: frozen %s CNN (width %s, %d features) of %s (its stage %s, epoch %s)",
                 config.backbone, config.cnn_width, config.feature_dim, self.init_dir,
                 self.init_info.get("stage", STAGE_END_TO_END), self.init_info.get("best_epoch"))

    def prepare(self, role, skipped) -> None:
        import keras

        import trainer  # noqa: F401  (registers the custom layers for load_model)
        from tfrecords_schema import SPLIT_TRAIN, join_path
        from trainer.model.spec import PER_FRAME_LAYER
        from trainer.training import distribution
        from trainer.training.features import FEATURES_DIRNAME, extract_features
        from trainer.training.fingerprint import dataset_fingerprint

        model = keras.saving.load_model(self.model_path, compile=False)
        self._backbone = model.get_layer(PER_FRAME_LAYER).layer
        extractor = keras.Model(model.input, model.get_layer(PER_FRAME_LAYER).output)
        # Non-chief workers compute their own copy in a temporary folder (removed by close()).
        self.features_dir = distribution.write_dir(join_path(self.config.job_dir, FEATURES_DIRNAME), role)
        splits = {SPLIT_TRAIN, self.plan.select_split, self.plan.eval_split}
        self.index = extract_features(self.config.data, self.plan.info, splits, extractor, self.features_dir,
                                      dataset_fingerprint=dataset_fingerprint(self.plan.info),
                                      backbone_sha256=self.backbone_sha256, init_from=self.init_dir,
                                      skipped=skipped)

    def build(self, spec, *, mixed_precision: bool = False):
        from trainer.model.build import build_sequence_model

        return build_sequence_model(spec, mixed_precision=mixed_precision)

    def frozen_layers(self, model) -> list:
        return []

    def fingerprint(self) -> dict:
        from trainer.training.fingerprint import job_fingerprint

        return job_fingerprint(self.config, self.plan.info, self.plan.heads, init_backbone=self.backbone_sha256)

    def eval_dataset_fn(self, skipped):
        from trainer.input.features import make_feature_eval_dataset

        config = self.config
        return lambda split: make_feature_eval_dataset(
            self.features_dir, self.index, split=split, task=config.task, seq_len=config.seq_len,
            batch_size=config.eval_batch_size or config.batch_size, skipped=skipped)

    def train_dataset(self, batch_size: int, seed: int, input_context, skipped):
        from trainer.input.features import make_feature_train_dataset

        config = self.config
        return make_feature_train_dataset(self.features_dir, self.index, task=config.task, seq_len=config.seq_len,
                                          batch_size=batch_size, sampling=config.sampling,
                                          loss_weighting=config.loss_weighting, seed=seed,
                                          input_context=input_context, skipped=skipped)

    def export_model(self, eval_model):
        from trainer.training.features import assemble_export

        return assemble_export(eval_model, self._backbone, self.model_spec())

    def model_info(self) -> dict:
        return {"weights": {"source": "init_from", "path": self.init_dir, "sha256": self.backbone_sha256,
                            "init_stage": self.init_info.get("stage", STAGE_END_TO_END),
                            "init_weights": self.init_info.get("weights")},
                "init_from": self.init_dir}

    def close(self, role) -> None:
        from trainer.training import distribution

        if self.features_dir is not None:
            distribution.remove_temp_dir(self.features_dir, role)


def make_stage(config, plan) -> Stage:
    """The :class:`Stage` of ``config.stage``."""
    return {STAGE_FRAMES: FramesStage, STAGE_SEQUENCE: SequenceStage}.get(config.stage, Stage)(config, plan)
