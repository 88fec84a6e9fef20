"""Real two-worker training (MultiWorkerMirroredStrategy) with two CPU processes on loopback."""

import json
import os
import socket
import subprocess
import sys

import pytest
from trainer_data import write_dataset

from trainer import distribution

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


def test_two_workers_train_together_and_only_the_chief_exports(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 4, "Happiness": 4}, num_validation_clips_per_class=2,
                  num_shards_per_bucket=2, num_validation_shards=2, crop_size=16, clip_length=8)
    job = tmp_path / "job"
    codes, outputs = run_two_workers(str(data), job)
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
