"""Real distributed training: a 2-replica MirroredStrategy on two logical CPUs, and two workers on loopback.

Both checks are against ground truth: the mirrored run must give the losses and weights of a single-device
run on the same global batch, and the two workers must end with bit-identical weights.
"""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from trainer_data import write_dataset

from trainer.training import distribution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_two_workers(data, job_dir, timeout=300):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "trainer.train", "--data", data, "--job_dir", str(job_dir), "--task", "expr",
               "--strategy", "multi_worker", "--epochs", "2", "--steps_per_epoch", "3", "--batch_size", "4",
               "--seq_len", "4", "--cnn_width", "0.25", "--feature_dim", "16", "--rnn_units", "16", "--log_every", "1",
               "--checkpoint_every", "2"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def two_worker_job(tmp_path_factory):
    """One two-worker job (6 steps), shared by the tests that look at it: ``(job_dir, exit codes, outputs)``."""
    tmp = tmp_path_factory.mktemp("two_workers")
    data = tmp / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 4, "Happiness": 4}, num_validation_clips_per_class=2,
                  num_shards_per_bucket=2, num_validation_shards=2, crop_size=16, clip_length=8)
    job = tmp / "job"
    codes, outputs = run_two_workers(str(data), job)
    return job, codes, outputs


def _final_checksums(outputs):
    """``[(all weights, trainable weights)]`` sha256 of each worker's final model, from its log."""
    pattern = r"training finished at step 6, weights sha256 ([0-9a-f]{64}) \(trainable ([0-9a-f]{64})\)"
    found = [re.findall(pattern, out) for out in outputs]
    assert all(len(f) == 1 for f in found), "\n".join(o[-2000:] for o in outputs)
    return [f[0] for f in found]


def test_two_workers_train_together_and_only_the_chief_exports(two_worker_job):
    job, codes, outputs = two_worker_job
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for out in outputs:
        assert "strategy multi_worker: CollectiveAllReduceStrategy (2 replicas)" in out
        assert "step 6/6" in out
    assert "chief=True" in outputs[0] and "chief=False" in outputs[1]
    assert (job / "export" / "model.keras").is_file()
    assert (job / "export" / "saved_model" / "saved_model.pb").is_file()
    assert "expression" in json.loads((job / "metrics.json").read_text())
    # Only the chief printed the final report.
    assert "metrics_json:" in outputs[0] and "metrics_json:" not in outputs[1]
    # The gradients are all-reduced: both workers end with the same trainable weights, to the bit.
    (_, trainable0), (_, trainable1) = _final_checksums(outputs)
    assert trainable0 == trainable1


def test_two_workers_end_with_identical_weights_including_batchnorm_statistics(two_worker_job):
    _, codes, outputs = two_worker_job
    assert codes == [0, 0]
    # BatchNorm's moving statistics too: each worker normalises its own half of the batch, so without the
    # per-step average in trainer/training/step.py they would differ (and the export would keep the chief's alone).
    (all0, _), (all1, _) = _final_checksums(outputs)
    assert all0 == all1


def test_fewer_shards_than_workers_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  num_shards_per_bucket=1, crop_size=16, clip_length=4)
    codes, outputs = run_two_workers(str(data), tmp_path / "job", timeout=180)
    assert codes == [1, 1], "\n".join(o[-3000:] for o in outputs)
    for out in outputs:
        assert "1 shard file(s) but there are 2 input pipelines" in out


def test_tf_config_roles():
    cluster = {"worker": ["a:1", "b:2"]}
    assert distribution.role_from_tf_config({"cluster": cluster, "task": {"type": "worker", "index": 0}}).is_chief
    assert not distribution.role_from_tf_config({"cluster": cluster, "task": {"type": "worker", "index": 1}}).is_chief
    with_chief = {"chief": ["c:3"], **cluster}
    worker0 = {"cluster": with_chief, "task": {"type": "worker", "index": 0}}
    assert not distribution.role_from_tf_config(worker0).is_chief
    assert distribution.role_from_tf_config({"cluster": with_chief, "task": {"type": "chief", "index": 0}}).is_chief
    assert distribution.role_from_tf_config({}).is_chief


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribution.make_strategy("multi_worker")


# Runs in a fresh process: the two logical CPUs must be configured before TensorFlow initialises its devices.
MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from trainer.training.config import TrainConfig
    from trainer.model.spec import ModelSpec
    from trainer.training.step import build_model_and_optimizer, make_train_step

    B, T, S, C, STEPS = 4, 3, 16, 3, 3
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (B // 2, T, S, S, 3), dtype=np.uint8)
    # The second half mirrors the first: different clips, but the same per-channel pixel statistics, so the
    # input BatchNorm's per-replica batch statistics equal those of the whole batch (as in a single run).
    images = np.concatenate([half, half[:, :, :, ::-1]])
    labels = rng.integers(0, C, (B, T)).astype(np.int32)
    frame_weights = (rng.random((B, T)) > 0.2).astype(np.float32)
    config = TrainConfig(data="unused", job_dir="unused", optimizer="sgd", learning_rate=0.1, batch_size=B,
                         seq_len=T, dropout=0.0)
    spec = ModelSpec(heads=("expression",), num_expression_classes=C, crop_size=S, cnn_width=0.25, feature_dim=8,
                     rnn_units=(8,), dropout=0.0)
    strategies = {"one": tf.distribute.OneDeviceStrategy("/cpu:0"),
                  "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                  "half_batch": tf.distribute.OneDeviceStrategy("/cpu:0")}
    out, init = {}, None
    for name, strategy in strategies.items():
        keras.utils.set_random_seed(0)
        model, optimizer = build_model_and_optimizer(config, spec, strategy, total_steps=STEPS)
        init = model.get_weights() if init is None else init
        model.set_weights(init)
        rows = slice(0, B // 2) if name == "half_batch" else slice(0, B)  # what one replica alone would see
        batch = (images[rows], {"expression": labels[rows]}, {"expression": frame_weights[rows]})
        dataset = tf.data.Dataset.from_tensors(batch).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        step = make_train_step(model, optimizer, strategy, global_frames=B * T, mixed_precision=False, jit=False)
        out[name + "_losses"] = np.array([float(step(iterator)["loss"]) for _ in range(STEPS)])
        out[name + "_replicas"] = np.array(strategy.num_replicas_in_sync)
        for i, w in enumerate(model.get_weights()):
            out[f"{name}_w{i}"] = w
    for i, w in enumerate(init):
        out[f"init_w{i}"] = w
    np.savez(sys.argv[1], **out)
""")


def test_mirrored_on_two_logical_cpus_matches_one_device_on_the_global_batch(tmp_path):
    result = tmp_path / "result.npz"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(result)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = np.load(result)
    assert int(r["one_replicas"]) == 1 and int(r["mirrored_replicas"]) == 2  # a real 2-replica all-reduce
    np.testing.assert_allclose(r["mirrored_losses"], r["one_losses"], rtol=1e-5)
    weights = sorted(k[len("one_"):] for k in r.files if k.startswith("one_w"))
    assert len(weights) > 10
    moved = 0.0
    for k in weights:
        np.testing.assert_allclose(r[f"mirrored_{k}"], r[f"one_{k}"], rtol=1e-4, atol=1e-6, err_msg=k)
        moved = max(moved, float(np.abs(r[f"one_{k}"] - r[f"init_{k}"]).max()))
    assert moved > 1e-3  # the steps really trained
    # The check can fail: one replica's half of the batch alone leads elsewhere.
    gap = max(float(np.abs(r[f"half_batch_{k}"] - r[f"one_{k}"]).max()) for k in weights)
    assert gap > 100 * 1e-6, gap
