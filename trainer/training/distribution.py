"""Strategy selection and the worker roles of multi-worker training.

* ``auto``: MirroredStrategy when more than one GPU is visible, else OneDeviceStrategy
  (the GPU if there is one, else the CPU).
* ``one_device``, ``mirrored``: as named.
* ``multi_worker``: MultiWorkerMirroredStrategy from the ``TF_CONFIG`` environment
  variable (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
  "index": i}}``). Worker 0 (or the ``chief`` task if the cluster has one) is the chief:
  only it writes exports, reports, metrics and TensorBoard logs; the other workers
  write their checkpoints to temporary directories that are removed afterwards, as the
  TensorFlow multi-worker guide recommends (saving is collective, so every worker saves).

Create the strategy before any other TensorFlow op runs (MultiWorkerMirroredStrategy
must be created at program start).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zlib

import tensorflow as tf

from trainer.common.choices import STRATEGIES, STRATEGY_MULTI_WORKER
from trainer.training.config import ConfigError

log = logging.getLogger("trainer.train")


@dataclasses.dataclass
class Role:
    """Where this process stands in the cluster.

    Attributes:
        task_type: ``"worker"``/``"chief"``, or None outside a cluster.
        task_id: Index of the task in its type.
        num_workers: Worker processes in the cluster (1 outside a cluster).
        has_chief: Whether the cluster names a separate ``chief`` task.
    """

    task_type: str | None = None
    task_id: int = 0
    num_workers: int = 1
    has_chief: bool = False

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the job's shared outputs (logs, export, reports)."""
        if self.task_type is None or self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_id == 0 and not self.has_chief


def read_tf_config() -> dict:
    """The parsed ``TF_CONFIG`` (empty dict when unset). Raises ValueError when malformed."""
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from e
    if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
        raise ValueError('TF_CONFIG must look like {"cluster": {"worker": [...]}, "task": {"type": ..., "index": ...}}')
    return config


def role_from_tf_config(config: dict) -> Role:
    """This process's :class:`Role` from a parsed ``TF_CONFIG`` (an empty dict: outside a cluster)."""
    if not config:
        return Role()
    cluster = config["cluster"]
    task = config["task"]
    num_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    return Role(task_type=task.get("type"), task_id=int(task.get("index", 0)), num_workers=num_workers,
                has_chief=bool(cluster.get("chief")))


# Options the workers of one multi-worker job may be given differently: where the data and the files to start from are
# (a path can differ between machines that see the same storage; the service job names the data by its content, and
# variables start from the first worker's values anyway) and how much a worker logs. Every other option changes what
# the workers compute together (the steps, the collectives inside them, when they checkpoint, evaluate and stop), or
# names what they share (the job folder, the tf.data service job), so they must agree.
PER_WORKER_OPTIONS = frozenset({"data", "init_from", "features_from", "weights", "class_map", "log_every", "verbose"})


def _shared_options(options: dict) -> list[str]:
    """The names of ``options`` every worker must agree on, sorted."""
    return sorted(set(options) - PER_WORKER_OPTIONS)


def different_options(options: dict, replica_digests) -> list[str]:
    """The names of ``options`` (sorted, :data:`PER_WORKER_OPTIONS` left out) whose digests differ between the rows of
    ``replica_digests`` (``[replicas, options]``, one row per replica of the cluster, as :func:`option_digests`)."""
    import numpy as np

    names = _shared_options(options)
    rows = np.asarray(replica_digests).reshape(-1, len(names))
    return [name for name, column in zip(names, rows.T) if len(set(column.tolist())) > 1]


def option_digests(options: dict) -> list[int]:
    """One CRC-32 per option of ``options`` (sorted by name, :data:`PER_WORKER_OPTIONS` left out)."""
    return [zlib.crc32(json.dumps(options[name], sort_keys=True, default=str).encode("utf-8"))
            for name in _shared_options(options)]


def check_same_options(strategy: tf.distribute.Strategy, role: Role, options: dict) -> None:
    """Raises ConfigError, on every worker, when the workers of a multi-worker job were started with different options.

    Before this check, a worker given another ``--learning_rate`` or ``--batch_size`` trained along silently (the
    chief's options recorded for the job), another ``--cnn_width`` failed in TensorFlow's words ("Shape mismatch in
    the collective instance"), and another ``--epochs`` left one worker dying on a closed socket after the chief had
    exported. One all-gather of a digest per option, before any other collective, names the options that differ.
    """
    if role.num_workers <= 1:
        return
    local = tf.constant(option_digests(options), tf.int64)

    @tf.function(autograph=False)  # (Eagerly, the strategy warns of its overhead in every multi-worker log.)
    def gather():
        return strategy.gather(strategy.run(lambda: tf.identity(local)), axis=0)

    differ = different_options(options, gather().numpy())
    if differ:
        mine = ", ".join(f"--{name} {json.dumps(options[name], default=str)}" for name in differ)
        raise ConfigError(f"the workers of this job were started with different options: {', '.join(differ)} (this "
                         f"worker, {role.task_type} {role.task_id}: {mine}); start every worker with the same "
                         f"options (only {', '.join(sorted(PER_WORKER_OPTIONS))} may differ)")


def make_strategy(name: str) -> tuple[tf.distribute.Strategy, Role]:
    """Builds the strategy named by ``--strategy``; returns it with this process's role.

    Raises:
        ValueError: unknown name, or ``multi_worker`` without a usable TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid values: {', '.join(STRATEGIES)}")
    if name == STRATEGY_MULTI_WORKER:
        config = read_tf_config()
        if not config:
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable (cluster and task)")
        role = role_from_tf_config(config)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return strategy, role
    try:
        cluster = role_from_tf_config(read_tf_config())
    except (ValueError, TypeError, AttributeError):  # (Read by multi_worker only: a malformed one changes nothing.)
        cluster = Role()
    if cluster.num_workers > 1:  # Each worker of the cluster would train alone, all into one --job_dir.
        log.warning("TF_CONFIG names a cluster of %d workers, but --strategy %s trains this process alone "
                    "(TF_CONFIG is read by --strategy multi_worker only): pass --strategy multi_worker to every worker",
                    cluster.num_workers, name)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy(), Role()
    device = gpus[0].name if gpus else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device), Role()


def weights_checksum(model, trainable_only: bool = False) -> str:
    """SHA-256 over the weights of ``model`` (each one's path, dtype, shape and bytes, in model order).

    Synchronous training keeps every replica's and every worker's copy identical, so every worker of a job
    logs the same checksums at the end (the multi-worker test compares them). ``trainable_only`` leaves out
    the non-trainable weights (BatchNorm moving statistics), which each replica updates from its own part
    of the batch unless the training step averages them.
    """
    import numpy as np

    digest = hashlib.sha256()
    weights = model.trainable_weights if trainable_only else model.weights
    for variable, value in zip(weights, (w.numpy() for w in weights)):
        value = np.ascontiguousarray(value)
        digest.update(f"{variable.path}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def has_gpu() -> bool:
    """Whether TensorFlow sees at least one physical GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic, which oneDNN uses for TensorFlow's CPU kernels.
CPU_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (False when unknown): there ``--precision mixed_bfloat16`` is
    faster than float32 (measured on an EPYC with AVX512_BF16: a stack of 3x3 convolutions at 112², ~1.9x less
    CPU), while float16 is emulated everywhere on CPUs (~2.2x more)."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and CPU_BFLOAT16_FLAGS & set(line.split()) for line in f)
    except OSError:
        return False


def write_dir(path: str, role: Role) -> str:
    """``path`` on the chief; a fresh temporary directory on other workers."""
    if role.is_chief:
        return path
    return tempfile.mkdtemp(prefix=f"affectstream_worker{role.task_id}_")


def remove_temp_dir(path: str, role: Role) -> None:
    """Removes a directory made by :func:`write_dir` on a non-chief worker."""
    if not role.is_chief and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
