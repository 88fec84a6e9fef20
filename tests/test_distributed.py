"""Real distributed training: a 2-replica MirroredStrategy on two logical CPUs, and two workers on loopback.

The checks are against ground truth: the mirrored runs must give the losses, gradients, weights and BatchNorm
statistics of a single-device run on the same global batch (the valence-arousal CCC of the global batch, with
the replicas fed different data), and the two workers (multi-task, on composite buckets whose small shard sets
they share) must end with bit-identical weights.
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


def start_two_workers(data, job_dir, extra=((), ())):
    """Starts a two-worker job on loopback (``extra``: each worker's own further flags, which win over the ones here);
    the two processes. Their scratch folders go under ``job_dir``'s parent (TMPDIR), also those of a killed worker."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": os.path.dirname(str(job_dir)),
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "trainer.train", "--data", str(data), "--job_dir", str(job_dir), "--task", "multi",
               "--strategy", "multi_worker", "--epochs", "2", "--steps_per_epoch", "3", "--batch_size", "4",
               "--seq_len", "4", "--cnn_width", "0.25", "--feature_dim", "16", "--rnn_units", "16", "--log_every", "1",
               "--checkpoint_every", "2", *extra[index]]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def run_two_workers(data, job_dir, timeout=300, extra=((), ())):
    """Runs a two-worker job on loopback (:func:`start_two_workers`) to its end; (exit codes, outputs)."""
    procs = start_two_workers(data, job_dir, extra)
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
    # Composite buckets: most hold one clip, in one of their two shard files, so the workers share those files.
    write_dataset(data, num_clips_per_class={"Neutral": 4, "Happiness": 4}, num_validation_clips_per_class=2,
                  num_shards_per_bucket=2, num_validation_shards=2, crop_size=16, clip_length=8, bucket_by="tasks")
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
    # Composite buckets with one non-empty shard file are read by both workers (records.assign_shards).
    assert all("non-empty shard file(s) for 2 input pipelines: every pipeline reads all of them" in o for o in outputs)
    assert (job / "input_mix.json").is_file()  # the chief's
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


def test_workers_started_with_different_options_are_refused_naming_them(tmp_path):
    # Before: a worker given another --learning_rate trained along silently (the chief's options recorded for the
    # job), and one given another --epochs died on a closed socket after the chief had exported.
    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=8)
    job = tmp_path / "job"
    codes, outputs = run_two_workers(str(data), job, timeout=180,
                                     extra=(["--verbose", "false"], ["--learning_rate", "0.1", "--epochs", "3"]))
    assert codes == [2, 2], "\n".join(o[-2000:] for o in outputs)
    for index, out in enumerate(outputs):
        assert ("the workers of this job were started with different options: epochs, learning_rate "
                f"(this worker, worker {index}: ") in out
    assert "(this worker, worker 0: --epochs 2, --learning_rate 0.001)" in outputs[0]
    assert "(this worker, worker 1: --epochs 3, --learning_rate 0.1)" in outputs[1]
    assert not job.exists()  # refused before the job folder was made


def test_a_worker_that_dies_is_said_in_words_with_what_to_do(tmp_path):
    # The chief used to end on TensorFlow's "UnavailableError: Graph execution error: ... Collective ops is aborted
    # by: ... heartbeat timeout", with nothing saying that a worker was gone or that a rerun resumes.
    import time

    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=8)
    long_run = ["--epochs", "1000", "--steps_per_epoch", "10"]  # (killed long before its end)
    procs = start_two_workers(data, tmp_path / "job", (long_run, long_run))
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "job").glob("checkpoints/ckpt-*.index")) and time.monotonic() < deadline:
            time.sleep(0.5)
        procs[1].kill()
        out = procs[0].communicate(timeout=120)[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1, out[-3000:]
    said = out.rfind("error: a worker of this multi-worker job stopped or cannot be reached, so every worker stops; "
                     "start every worker again with the same command: the job resumes from its last checkpoint")
    assert said > out.rfind("error: UnavailableError") >= 0 or said > out.rfind("error: AbortedError") >= 0, \
        out[-3000:]


def test_only_the_options_the_workers_compute_together_must_agree():
    options = {"learning_rate": 0.001, "epochs": 2, "data": "/mnt/a", "verbose": False, "rnn_units": [8, 8]}
    other = {**options, "data": "/data/a", "verbose": True}
    rows = [distribution.option_digests(options), distribution.option_digests(other)]
    assert distribution.different_options(options, rows) == []
    rows.append(distribution.option_digests({**other, "rnn_units": [8, 4], "epochs": 3}))
    assert distribution.different_options(options, rows) == ["epochs", "rnn_units"]


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


def test_a_cluster_in_tf_config_without_strategy_multi_worker_is_said(monkeypatch, caplog):
    # Every worker started with TF_CONFIG but without --strategy multi_worker trained alone, silently, each into the
    # same --job_dir (the second one then stopped on the job's lock, which says nothing of the strategy).
    workers = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(workers))
    caplog.set_level("WARNING", logger="trainer.train")
    strategy, role = distribution.make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1 and role.is_chief
    assert "TF_CONFIG names a cluster of 2 workers, but --strategy auto trains this process alone" in caplog.text
    caplog.clear()
    for config in ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}, "{not json"):
        monkeypatch.setenv("TF_CONFIG", config if isinstance(config, str) else json.dumps(config))
        distribution.make_strategy("auto")  # One worker (as platforms set it), or malformed: nothing to say here.
    assert "TF_CONFIG" not in caplog.text


# Runs in a fresh process: the two logical CPUs must be configured before TensorFlow initialises its devices.
# One OneDeviceStrategy and one MirroredStrategy serve every run (several MirroredStrategy objects in one process
# can mix up their collectives' instance keys).
MIRRORED_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from trainer.model.losses import weighted_ccc
    from trainer.model.spec import ModelSpec
    from trainer.training.config import TrainConfig
    from trainer.training.step import build_model_and_optimizer, make_train_step

    ONE, MIRRORED = tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    B, T, STEPS, LR = 4, 3, 3, 0.1
    out = {}

    def run(name, strategy, builder, batch, global_frames, jit=False):
        keras.utils.set_random_seed(0)
        config = TrainConfig(data="unused", job_dir="unused", optimizer="sgd", learning_rate=LR, batch_size=B,
                             seq_len=T, dropout=0.0)
        model, optimizer = build_model_and_optimizer(config, None, strategy, total_steps=STEPS, builder=builder)
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat()))
        step = make_train_step(model, optimizer, strategy, global_frames=global_frames, loss_scale=False, jit=jit)
        losses = []
        for s in range(STEPS):
            before = [w.copy() for w in model.get_weights()]
            losses.append(float(step(iterator)["loss"]))
            if s == 0:  # SGD: the first step's gradient is (before - after) / learning rate
                for i, (a, b) in enumerate(zip(before, model.get_weights())):
                    out[f"{name}_grad{i}"] = (a - b) / LR
        out[name + "_losses"] = np.array(losses)
        out[name + "_replicas"] = np.array(strategy.num_replicas_in_sync)
        for i, (variable, w) in enumerate(zip(model.weights, model.get_weights())):
            out[f"{name}_w{i}"] = w
            out[f"{name}_path{i}"] = np.array(variable.path)
        return model

    # 1. The whole model on expression. The second half mirrors the first: different clips, but the same
    #    per-channel pixel statistics, so the input BatchNorm's per-replica batch statistics equal those of the
    #    whole batch (as in a single run).
    S, C = 16, 3
    rng = np.random.default_rng(0)
    half = rng.integers(0, 256, (B // 2, T, S, S, 3), dtype=np.uint8)
    images = np.concatenate([half, half[:, :, :, ::-1]])
    labels = rng.integers(0, C, (B, T)).astype(np.int32)
    frame_weights = (rng.random((B, T)) > 0.2).astype(np.float32)
    # No augmentation: the replicas of a step augment their clips differently (checked at the end), one device alone.
    spec = ModelSpec(heads=("expression",), num_expression_classes=C, crop_size=S, cnn_width=0.25, feature_dim=8,
                     rnn_units=(8,), dropout=0.0, augment=False)
    from trainer.model.build import build_model
    for name, strategy, rows in (("one", ONE, slice(0, B)), ("mirrored", MIRRORED, slice(0, B)),
                                 ("half_batch", ONE, slice(0, B // 2))):  # what one replica alone would see
        batch = (images[rows], {"expression": labels[rows]}, {"expression": frame_weights[rows]})
        run(name, strategy, lambda spec_, precision: build_model(spec, precision=precision), batch,
            B * T)

    # 2. Valence-arousal: each replica gets different clips (the second half darker, its labels elsewhere and
    #    more of its frames unweighted), a model without BatchNorm, so the outputs are those of one device.
    S = 4
    va_images = rng.integers(0, 256, (B, T, S, S, 3), dtype=np.uint8)
    va_images[B // 2:] //= 3
    va = rng.uniform(-1, 1, (B, T, 2)).astype(np.float32)
    va[B // 2:] = va[B // 2:] * 0.3 + 0.4
    va_weights = (rng.random((B, T)) > 0.25).astype(np.float32)
    va_weights[B // 2:, 0] = 0.0

    def va_model(batchnorm):
        x = keras.Input((T, S, S, 3))
        h = keras.layers.Rescaling(1 / 255.0)(x)
        if batchnorm:  # the first layer: its batch statistics depend on the data only, not on the weights
            h = keras.layers.BatchNormalization(momentum=0.9)(h)
        h = keras.layers.Dense(8, activation="tanh")(keras.layers.Reshape((T, S * S * 3))(h))
        return keras.Model(x, {"valence_arousal": keras.layers.Dense(2, activation="tanh")(h)})

    for name, strategy, rows, jit, bn in (("va_one", ONE, slice(0, B), False, False),
                                          ("va_mirrored", MIRRORED, slice(0, B), False, False),
                                          ("va_mirrored_xla", MIRRORED, slice(0, B), True, False),
                                          ("bn_one", ONE, slice(0, B), False, True),
                                          ("bn_mirrored", MIRRORED, slice(0, B), False, True),
                                          ("bn_half0", ONE, slice(0, B // 2), False, True),
                                          ("bn_half1", ONE, slice(B // 2, B), False, True)):
        batch = (va_images[rows], {"valence_arousal": va[rows]}, {"valence_arousal": va_weights[rows]})
        model = run(name, strategy, lambda spec_, precision, bn=bn: va_model(bn), batch,
                    (rows.stop - rows.start) * T, jit=jit)
    # The old loss, a mean of the replicas' CCCs, on the same first-step predictions (the check can fail).
    keras.utils.set_random_seed(0)
    model = va_model(False)
    pred = model(va_images)["valence_arousal"]
    halves = [1 - float(tf.reduce_mean(weighted_ccc(va[r], pred[r], va_weights[r])))
              for r in (slice(0, B // 2), slice(B // 2, B))]
    out["va_per_replica_mean_loss"] = np.array(np.mean(halves))

    # 3. The model's augmentation layer: the same clip on both replicas of one step, augmented differently.
    from trainer.model.augment import ClipAugmentation
    with MIRRORED.scope():
        frames = keras.Input((T, 16, 16, 3), dtype="uint8")
        augmenter = keras.Model(frames, ClipAugmentation(True, seed=3)(frames))
    clip = tf.constant(rng.integers(1, 256, (1, T, 16, 16, 3), dtype=np.uint8))
    augmented = MIRRORED.experimental_local_results(
        tf.function(lambda: MIRRORED.run(lambda: augmenter(clip, training=True)))())
    out["augmented_replicas"] = np.stack([a.numpy() for a in augmented])
    np.savez(sys.argv[1], **out)
""")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The runs of MIRRORED_SCRIPT (one subprocess for every mirrored-vs-one-device check)."""
    result = tmp_path_factory.mktemp("mirrored") / "result.npz"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(result)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(result)


def _weights(r, name):
    return sorted(k[len(name) + 2:] for k in r.files if k.startswith(f"{name}_w"))


def test_mirrored_on_two_logical_cpus_matches_one_device_on_the_global_batch(mirrored):
    r = mirrored
    assert int(r["one_replicas"]) == 1 and int(r["mirrored_replicas"]) == 2  # a real 2-replica all-reduce
    np.testing.assert_allclose(r["mirrored_losses"], r["one_losses"], rtol=1e-5)
    weights = _weights(r, "one")
    assert len(weights) > 10
    for k in weights:
        np.testing.assert_allclose(r[f"mirrored_w{k}"], r[f"one_w{k}"], rtol=1e-4, atol=1e-6, err_msg=k)
    assert max(float(np.abs(r[f"one_grad{k}"]).max()) for k in weights) * 0.1 > 1e-3  # the steps really trained
    # The check can fail: one replica's half of the batch alone leads elsewhere.
    gap = max(float(np.abs(r[f"half_batch_w{k}"] - r[f"one_w{k}"]).max()) for k in weights)
    assert gap > 100 * 1e-6, gap


def test_va_loss_is_the_ccc_of_the_global_batch_with_replicas_fed_different_data(mirrored):
    r = mirrored
    for name in ("va_mirrored", "va_mirrored_xla"):  # plain, and with the forward pass XLA-compiled
        assert int(r[f"{name}_replicas"]) == 2
        np.testing.assert_allclose(r[f"{name}_losses"], r["va_one_losses"], rtol=1e-5, err_msg=name)
        for k in _weights(r, "va_one"):
            np.testing.assert_allclose(r[f"{name}_grad{k}"], r[f"va_one_grad{k}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} gradient {k}")
            np.testing.assert_allclose(r[f"{name}_w{k}"], r[f"va_one_w{k}"], rtol=1e-4, atol=1e-6)
    assert max(float(np.abs(r[f"va_one_grad{k}"]).max()) for k in _weights(r, "va_one")) > 0.01  # it trained
    # The check can fail: the mean of the replicas' CCC losses is another number.
    assert abs(float(r["va_per_replica_mean_loss"]) - float(r["va_one_losses"][0])) > 0.05


def test_batchnorm_moving_variance_combines_replica_variances_and_the_spread_of_their_means(mirrored):
    r = mirrored
    paths = {str(r[f"bn_one_path{k}"]).rsplit("/", 1)[-1]: k for k in _weights(r, "bn_one")}
    for stat in ("moving_mean", "moving_variance"):
        k = paths[stat]
        np.testing.assert_allclose(r[f"bn_mirrored_w{k}"], r[f"bn_one_w{k}"], rtol=1e-5, atol=1e-7, err_msg=stat)
    # The check can fail: averaging the replicas' moving variances (each from its half alone) misses the spread
    # of the halves' means.
    k = paths["moving_variance"]
    averaged = (r[f"bn_half0_w{k}"] + r[f"bn_half1_w{k}"]) / 2
    assert float(np.abs(averaged - r[f"bn_one_w{k}"]).max()) > 100 * 1e-5


def test_the_replicas_of_a_step_augment_their_clips_differently(mirrored):
    first, second = mirrored["augmented_replicas"]
    assert first.shape == second.shape and not np.array_equal(first, second)
