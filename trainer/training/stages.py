"""Training stages (``--stage``): end-to-end, or the paper's two stages (per-frame CNN, then temporal head).

* ``end_to_end`` (default): the CNN and the temporal head (``--temporal``: the paper's GRU stack by default,
  :mod:`trainer.model.temporal`) train together on clips of ``--seq_len`` frames.
* ``frames``: the CNN trains alone, per frame: one random frame per sampled clip (sequence length 1, so
  ``--batch_size`` counts frames), the task's heads straight on each frame's CNN features, no temporal
  head. Evaluation runs it over windows like any model (each frame on its own); its export is per frame.
  Rebalancing, augmentation, ``--weights`` and ``--freeze_backbone_epochs`` work as end-to-end.
* ``--init_from EXPORT`` (``frames`` and ``end_to_end``): the CNN starts as the per-frame network of any export,
  trained or imported (:mod:`trainer.training.export_source`), and ``--freeze_backbone_epochs`` freezes all of
  it. The per-frame model keeps the export's heads whose classes are the data's, or its expression head mapped
  by ``--class_map``, and gets new ones otherwise; end to end, the heads are new (they read the temporal head).
  An export whose network is an imported SavedModel folder is refused: it cannot be fine-tuned
  (:func:`trainer.training.export_source.check_init_from`; its frozen features go to ``--stage sequence``).
* ``sequence --features_from EXPORT [--feature_layer NAME]``: the per-frame network of EXPORT (a ``frames`` job,
  any other job, or an imported model; cut at NAME) is frozen; its per-frame features are computed once for
  every clip of the splits the job reads, from the data's crops through the network's own input specification,
  and written as feature shards in ``--job_dir/features/`` (:mod:`trainer.training.features`,
  :mod:`tfrecords_schema.features`); the temporal head and the heads train on them, with the same bucket
  rebalancing as the clips (the feature shards keep the clip shards' buckets). The job exports ONE model,
  EXPORT's network followed by the trained head, with the same input, outputs and ``model_info.json`` contract
  as an end-to-end export, and its final report scores that model on the images. (``--init_from`` of this
  stage means ``--features_from``.)

A :class:`Stage` gives :func:`trainer.train.train` what differs between them: the trained model, the
training sequence length, the training stream, the per-epoch evaluation data, the layers to freeze, the
fingerprint and the export.
"""

from __future__ import annotations

import dataclasses
import logging

from trainer.common.choices import STAGE_FRAMES, STAGE_SEQUENCE

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
        self.source = None  # --init_from: the export whose per-frame network the CNN starts as
        if config.init_from:
            from trainer.training.export_source import ExportSource, check_init_from

            check_init_from(config.init_from)  # an imported SavedModel cannot be fine-tuned
            self.source = ExportSource(config.init_from, "--init_from")
            self.source.cnn(self.source.load(), plan.info.crop_size)  # refuses another crop size now

    @property
    def train_seq_len(self) -> int:
        """Frames per training sequence."""
        return self.config.seq_len

    def model_spec(self):
        """The :class:`trainer.model.spec.ModelSpec` of the exported model."""
        from trainer.training.plan import model_spec_for

        return model_spec_for(self.config, self.plan.info, self.plan.heads)

    def build(self, spec, *, precision: str = "float32"):
        """Builds the trained model of ``spec`` (the job's models are all built here; ``precision``: --precision)."""
        from trainer.model.build import build_model

        if self.source is None:
            return build_model(spec, precision=precision)
        exported = self.source.load()
        model = build_model(spec, precision=precision, cnn=self.source.cnn(exported, spec.crop_size))
        self._copy_heads(model, exported)
        return model

    def _copy_heads(self, model, exported) -> None:
        """Copies the export's heads that the model keeps (none end to end: the heads read the temporal head)."""

    def prepare(self, role, skipped) -> None:
        """Work before the models are built (the sequence stage computes its features here)."""

    def frozen_layers(self, model) -> list:
        """The layers ``--freeze_backbone_epochs`` freezes (none without it): an ``--init_from`` CNN whole."""
        from trainer.model.build import pretrained_layers
        from trainer.model.spec import PER_FRAME_LAYER

        if not self.config.freeze_backbone_epochs:
            return []
        if self.source is not None:
            return [model.get_layer(PER_FRAME_LAYER).layer]
        return pretrained_layers(model, self.model_spec())

    def fingerprint(self) -> dict:
        """The job fingerprint stored in the checkpoints (:func:`trainer.training.fingerprint.job_fingerprint`)."""
        from trainer.training.fingerprint import job_fingerprint

        return job_fingerprint(self.config, self.plan.info, self.plan.heads,
                               init_backbone=None if self.source is None else self.source.sha256,
                               select_split=self.plan.select_split, steps_per_epoch=self.plan.steps_per_epoch)

    def eval_dataset_fn(self, skipped):
        """``split -> dataset`` for the per-epoch evaluation, or None for the clips (the default)."""
        return

    def train_dataset(self, batch_size: int, seed: int, input_context, skipped):
        """The training stream (one replica's): rebalanced clips of :attr:`train_seq_len` frames."""
        from trainer.input.pipeline import make_train_dataset

        config = self.config
        return make_train_dataset(
            config.data, self.plan.info, **self._stream_options(batch_size), seed=seed, input_context=input_context,
            skipped=skipped, data_service=config.data_service,
            data_service_job=self.data_service_job(batch_size, seed) if config.data_service else None,
        )

    def _stream_options(self, batch_size: int) -> dict:
        """What :meth:`train_dataset` builds one replica's stream from, besides the data, the seed and the plumbing:
        also what names its tf.data service job (:meth:`data_service_job`)."""
        config = self.config
        return {"task": config.task, "seq_len": self.train_seq_len, "batch_size": batch_size,
                "sampling": config.sampling, "loss_weighting": config.loss_weighting,
                "class_weights": self.plan.class_weights, "windows_per_clip": config.windows_per_clip}

    def data_service_job(self, batch_size: int, seed: int) -> str:
        """The tf.data service job of this run's stream (``batch_size``: one replica's): every worker of the run
        names the same, and a run whose stream differs (a resume with other options) another.

        Only what the stream is built from counts (:meth:`_stream_options`): an option that does not change it
        (``--verbose``, ``--epochs``) given differently to two workers of one run must not put them in two jobs,
        each then served the whole stream of the same seed. The data counts by its content, not its path: the
        workers of one job may name the same storage at different paths (``--data`` is a per-worker option).
        """
        import json

        from trainer.input import data_service
        from trainer.training.fingerprint import dataset_fingerprint

        stream = json.dumps({"data": dataset_fingerprint(self.plan.info), **self._stream_options(batch_size)},
                            sort_keys=True, default=str)
        return data_service.job_name(self.config.job_dir, seed, stream)

    def export_model(self, eval_model):
        """The model to export, given the float32 copy holding the best epoch."""
        return eval_model

    def model_info(self) -> dict:
        """What the stage adds to (or overrides in) ``model_info.json``."""
        from trainer.model.temporal import describe

        spec = self.model_spec()
        extras = {"temporal": describe(spec), "per_frame": spec.per_frame}
        if self.source is not None:
            extras.update({"weights": self.source.record("init_from"), "init_from": self.source.dir,
                           "backbone": self.source.backbone})
            if "input" in self.source.info:  # an imported network's input specification travels on
                extras["input"] = self.source.info["input"]
        return extras

    def close(self, role) -> None:
        """Removes what the stage left in temporary folders."""


class FramesStage(Stage):
    """``--stage frames``: the CNN with per-frame heads, trained on single frames (from ``--init_from``: fine-tuned)."""

    def __init__(self, config, plan):
        super().__init__(config, plan)
        self.heads = None
        if self.source is not None:
            from trainer.training.export_source import head_plan

            self.heads = head_plan(self.source, plan.heads, plan.info, config.class_map)

    @property
    def train_seq_len(self) -> int:
        return 1

    def model_spec(self):
        class_map = None if self.heads is None else self.heads.class_map
        return dataclasses.replace(super().model_spec(), temporal=None, class_map=class_map)

    def _copy_heads(self, model, exported) -> None:
        from trainer.training.export_source import copy_heads

        copy_heads(model, exported, self.heads.kept)

    def model_info(self) -> dict:
        extras = {**super().model_info(), "rnn": None, "rnn_units": []}
        if self.heads is not None:
            extras.update({"heads_kept": list(self.heads.kept), "class_map": self.heads.record()})
        return extras


class SequenceStage(Stage):
    """``--stage sequence``: the temporal head on the frozen features of ``--features_from``'s per-frame network."""

    trains_on_features = True

    def __init__(self, config, plan):
        from trainer.training.export_source import ExportSource

        source = ExportSource(config.features_from, "--features_from")
        self._cnn = source.cnn(source.load(), plan.info.crop_size, config.feature_layer)
        init_config = source.info.get("train_config") or {}
        # The backbone options describe the network the features come from (for the records; the network is used
        # as it is).
        config = dataclasses.replace(config, backbone=init_config.get("backbone", config.backbone),
                                     cnn_width=init_config.get("cnn_width", config.cnn_width),
                                     feature_dim=int(self._cnn.outputs[0].shape[-1]))
        super().__init__(config, plan)
        self.source = source
        self.features_dir = None
        self.index = None
        log.info("sequence stage: frozen per-frame network %s of %s (its stage %s, epoch %s)%s, %d features per frame",
                 source.backbone, source.dir, source.stage, source.info.get("best_epoch"),
                 f" cut at {config.feature_layer!r}" if config.feature_layer else "", config.feature_dim)

    def build(self, spec, *, precision: str = "float32"):
        from trainer.model.build import build_sequence_model

        return build_sequence_model(spec, precision=precision)

    def prepare(self, role, skipped) -> None:
        from tfrecords_schema import SPLIT_TRAIN, join_path
        from trainer.model.build import frame_features_model
        from trainer.training import distribution
        from trainer.training.features import FEATURES_DIRNAME, extract_features
        from trainer.training.fingerprint import dataset_fingerprint

        extractor = frame_features_model(self._cnn, self.plan.info.crop_size)
        # Non-chief workers compute their own copy in a temporary folder (removed by close()).
        self.features_dir = distribution.write_dir(join_path(self.config.job_dir, FEATURES_DIRNAME), role)
        splits = {SPLIT_TRAIN, self.plan.select_split, self.plan.eval_split}
        self.index = extract_features(self.config.data, self.plan.info, splits, extractor, self.features_dir,
                                      dataset_fingerprint=dataset_fingerprint(self.plan.info),
                                      backbone_sha256=self._features_key(), init_from=self.source.dir,
                                      skipped=skipped)

    def _features_key(self) -> str:
        """What the features are made by: the export's file, and the layer it is cut at."""
        layer = self.config.feature_layer
        return self.source.sha256 + (f"@{layer}" if layer else "")

    def frozen_layers(self, model) -> list:
        return []

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

        return assemble_export(eval_model, self._cnn, self.model_spec())

    def model_info(self) -> dict:
        return {**super().model_info(), "weights": self.source.record("features_from"), "init_from": self.source.dir,
                "features_from": self.source.dir, "feature_layer": self.config.feature_layer}

    def close(self, role) -> None:
        from trainer.training import distribution

        if self.features_dir is not None:
            distribution.remove_temp_dir(self.features_dir, role)


def make_stage(config, plan) -> Stage:
    """The :class:`Stage` of ``config.stage``."""
    return {STAGE_FRAMES: FramesStage, STAGE_SEQUENCE: SequenceStage}.get(config.stage, Stage)(config, plan)
