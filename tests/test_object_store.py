"""Training from an ``s3://`` URL (tensorflow-io) against a moto S3 server on loopback.

``gs://`` goes through TensorFlow's own file system and needs no extra code; there is no local GCS
server in the test dependencies, so it is not exercised here.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
from trainer_data import write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "affectstream-test"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3_server():
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "S3_ENDPOINT": f"http://127.0.0.1:{port}",
        "S3_USE_HTTPS": "0",
        "S3_VERIFY_SSL": "0",
    }
    try:
        yield env
    finally:
        server.stop()


def upload(local_root, env, prefix):
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["AWS_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket=BUCKET)
    for dirpath, _, files in os.walk(local_root):
        for name in files:
            path = os.path.join(dirpath, name)
            key = f"{prefix}/{os.path.relpath(path, local_root)}"
            s3.upload_file(path, BUCKET, key)


def test_train_from_s3_url_exits_zero_and_exports(tmp_path, s3_server):
    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=4)
    upload(str(data), s3_server, "converted")
    job = tmp_path / "job"
    env = {**os.environ, **s3_server, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "trainer.train", "--data", f"s3://{BUCKET}/converted", "--job_dir", str(job),
           "--task", "expr", "--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2", "--seq_len", "4",
           "--cnn_width", "0.25", "--feature_dim", "16", "--rnn_units", "8"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (job / "export" / "model.keras").is_file()
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["expression"]["frames"] > 0

    # Evaluating the exported model on the s3:// data also exits 0.
    done = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--model", str(job), "--data",
                           f"s3://{BUCKET}/converted", "--report_dir", str(tmp_path / "eval")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["expression"] == metrics["expression"]
