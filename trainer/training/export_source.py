"""The export a training stage starts from: ``--init_from`` (its CNN fine-tuned) and ``--features_from`` (frozen).

Any export will do: a training job's (``JOB`` or ``JOB/export``) or an imported model's
(:mod:`trainer.training.import_model`). Its per-frame network (:func:`trainer.model.pretrained.export_cnn`: the
features its heads read; an imported network's penultimate layer) carries the export's own input
specification (an imported network's :class:`trainer.model.layers.ImageAdapter` resizes any crop), so it runs on
the data's crops as they are. A trained CNN takes its own crop size only: another size is refused here, before
anything is computed.

:func:`head_plan` decides what a fine-tuned per-frame model keeps of the export's heads: a head whose label names
are the data's is kept (its Dense layer's weights copied in), and so is the expression head when ``--class_map``
maps the export's classes onto the data's; any other head is new.

:func:`check_init_from` refuses ``--init_from`` of an export whose per-frame network is an imported SavedModel folder
(:class:`trainer.model.saved_model.EmbeddedSavedModel`): its serving function is called as it is, so it cannot be
fine-tuned (docs/pretrained.md); its frozen features train a temporal head (``--stage sequence --features_from``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile

from tfrecords_schema import HEAD_EXPRESSION, join_path
from trainer.common.choices import STAGE_END_TO_END
from trainer.common.errors import TrainingError

log = logging.getLogger("trainer.train")


def embedded_saved_models(model_path: str) -> list[str]:
    """The names of the imported SavedModels (``EmbeddedSavedModel`` layers) in the ``.keras`` file ``model_path``.

    Read from the archive's ``config.json``: nothing is loaded.
    """
    import tensorflow as tf

    from trainer.model.saved_model import EmbeddedSavedModel

    with tf.io.gfile.GFile(model_path, "rb") as f, zipfile.ZipFile(f) as archive:
        config = json.loads(archive.read("config.json"))
    names, pending = [], [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("class_name") == EmbeddedSavedModel.__name__:
                names.append(str((node.get("config") or {}).get("name", EmbeddedSavedModel.__name__)))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return sorted(names)


def check_init_from(init_from: str | None) -> None:
    """Refuses ``--init_from`` an export whose per-frame network holds an imported SavedModel (it cannot be trained).

    An export that cannot be read is left to the stage, which reports it.

    Raises:
        trainer.training.config.ConfigError: the export's network is (or holds) an imported SavedModel folder.
    """
    import tensorflow as tf

    from trainer.model.export import MODEL_FILENAME, ExportError, resolve_model_dir
    from trainer.training.config import ConfigError

    if not init_from:
        return
    try:
        export_dir = resolve_model_dir(init_from)
        names = embedded_saved_models(join_path(export_dir, MODEL_FILENAME))
    except (ExportError, OSError, KeyError, ValueError, zipfile.BadZipFile, tf.errors.OpError):
        return
    if names:
        raise ConfigError(
            f"--init_from {export_dir}: its per-frame network is an imported SavedModel folder (layer "
            f"{', '.join(names)}), which cannot be fine-tuned: train a temporal head on its frozen features with "
            f"--stage sequence --features_from {init_from}, or import the model as a .keras file (onnx2tf -okv3) to "
            "fine-tune it")


class ExportSource:
    """An export given to ``option`` (``--init_from`` or ``--features_from``): its folder, info and model file.

    Raises:
        trainer.model.export.ExportError: the folder holds no export.
    """

    def __init__(self, path: str, option: str):
        from trainer.model.export import MODEL_FILENAME, check_model_file, read_model_info, resolve_model_dir
        from trainer.training.fingerprint import file_sha256

        self.option = option
        self.dir = resolve_model_dir(path, option)
        self.info = read_model_info(self.dir)
        self.model_path = join_path(self.dir, MODEL_FILENAME)
        check_model_file(self.model_path)
        self.sha256 = file_sha256(self.model_path)

    @property
    def stage(self) -> str:
        """The export's stage (``imported`` for an imported model)."""
        return self.info.get("stage", STAGE_END_TO_END)

    @property
    def backbone(self) -> str:
        """The backbone the export's per-frame network is (``imported_<name>`` for an imported model)."""
        return self.info.get("backbone", "unknown")

    def load(self):
        """A fresh copy of the export's model (every call: a stage's training and evaluation models share nothing)."""
        from trainer.model.export import load_export_model

        return load_export_model(self.model_path)

    def cnn(self, model, crop_size: int, feature_layer: str | None = None):
        """The per-frame network of ``model`` (cut at ``feature_layer``), checked to take ``crop_size`` crops.

        Raises:
            TrainingError: a network made for another crop size, or no such layer.
        """
        from trainer.model.pretrained import ModelImportError, cut_network, export_cnn

        try:
            cnn = export_cnn(model)
            if feature_layer:
                cnn = cut_network(cnn, feature_layer)
        except ModelImportError as e:
            raise TrainingError(f"{self.option} {self.dir}: {e}") from e
        size = tuple(cnn.inputs[0].shape[1:3])
        if None not in size and size != (crop_size, crop_size):
            raise TrainingError(
                f"{self.option} {self.dir} was trained on {size[0]} px crops, but the data holds {crop_size} px crops: "
                f"train on data converted at {size[0]} px, or give {self.option} an export trained on {crop_size} px "
                "crops (an imported model takes any crop size)")
        return cnn

    def record(self, source: str) -> dict:
        """How the stage's network was initialised, for ``model_info.json["weights"]``."""
        return {"source": source, "path": self.dir, "sha256": self.sha256, "init_stage": self.stage,
                "init_weights": self.info.get("weights")}


@dataclasses.dataclass
class HeadPlan:
    """What a fine-tuned per-frame model keeps of its export's heads.

    Attributes:
        class_map: The expression head's map of the export's classes onto the data's (None: the data's classes).
        kept: The heads whose Dense layer is copied from the export.
        mapping: The ``--class_map`` given (for ``model_info.json``), or the export's own map, or None.
        source_classes: The classes of the export's expression Dense layer (what ``mapping`` maps from).
    """

    class_map: tuple[int, ...] | None
    kept: tuple[str, ...]
    mapping: dict | None = None
    source_classes: tuple[str, ...] = ()

    def record(self) -> dict | None:
        """The class map as ``model_info.json["class_map"]`` records it (None without one)."""
        if self.class_map is None:
            return None
        return {"source": list(self.source_classes), "map": dict(self.mapping), "targets": list(self.class_map)}


def head_plan(source: ExportSource, heads, info, class_map_text: str | None) -> HeadPlan:
    """The heads a ``--stage frames --init_from`` model keeps (see the module docstring).

    Raises:
        TrainingError: a ``--class_map`` that names classes the export or the data do not have.
    """
    from trainer.model.export import is_per_frame
    from trainer.model.pretrained import class_map_targets, parse_class_map

    exported = source.info.get("label_names", {})
    own_map = source.info.get("class_map") or None
    source_classes = (own_map or {}).get("source") or exported.get(HEAD_EXPRESSION, [])
    kept, class_map, mapping = [], None, None
    # A sequence or end-to-end export's heads read its recurrent stack, not a frame's features: only its CNN fits.
    per_frame = is_per_frame(source.info)
    if class_map_text and not per_frame:
        raise TrainingError(f"--class_map reuses the expression head of {source.dir}, which reads its recurrent stack "
                            f"(a {source.stage} export), not a frame's features: give a per-frame export (--stage "
                            "frames, or import-model) or leave --class_map out for a new head")
    if not per_frame:
        log.info("%s %s is a %s export: its heads read its recurrent stack, so only its CNN is kept (heads new: %s)",
                 source.option, source.dir, source.stage, list(heads))
        return HeadPlan(None, (), None, tuple(source_classes))
    for head in heads:
        if head == HEAD_EXPRESSION and class_map_text:
            try:
                mapping = parse_class_map(class_map_text)
                class_map = class_map_targets(source_classes, mapping, info.expression_names)
            except ValueError as e:
                raise TrainingError(f"--class_map: {e}") from e
            kept.append(head)
        elif list(exported.get(head, [])) == list(info.label_names.get(head, [])) and head in source.info.get("heads",
                                                                                                              []):
            kept.append(head)
            if head == HEAD_EXPRESSION and own_map:
                class_map, mapping = tuple(own_map["targets"]), own_map["map"]
    new = [h for h in heads if h not in kept]
    if HEAD_EXPRESSION in new:
        log.info("%s %s: its classes %s are not the data's %s (and no --class_map): a new expression head",
                 source.option, source.dir, source_classes, info.expression_names)
    log.info("%s %s (%s, %s): heads kept %s, new %s", source.option, source.dir, source.stage, source.backbone, kept,
             new)
    return HeadPlan(class_map, tuple(kept), mapping, tuple(source_classes))


def copy_heads(model, exported, kept) -> None:
    """Copies the Dense layer of every kept head from the ``exported`` model into ``model``."""
    from trainer.model.build import HEAD_LAYERS

    for head in kept:
        model.get_layer(HEAD_LAYERS[head]).set_weights(exported.get_layer(HEAD_LAYERS[head]).get_weights())
