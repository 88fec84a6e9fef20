"""Training from an ``s3://`` URL (tensorflow-io) against a moto S3 server on loopback.

``gs://`` goes through TensorFlow's own file system and needs no extra code; there is no local GCS
server in the test dependencies, so it is not exercised here.
"""

import json
import os
import subprocess
import sys

from trainer_data import write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def upload(local_root, s3_server, prefix):
    for dirpath, _, files in os.walk(local_root):
        for name in files:
            path = os.path.join(dirpath, name)
            s3_server.client.upload_file(path, s3_server.bucket, f"{prefix}/{os.path.relpath(path, local_root)}")


def test_train_from_s3_url_exits_zero_and_exports(tmp_path, s3_server):
    data = tmp_path / "data"
    write_dataset(data, num_clips_per_class={"Neutral": 2, "Happiness": 2}, num_validation_clips_per_class=1,
                  crop_size=16, clip_length=4)
    upload(str(data), s3_server, "converted")
    job = tmp_path / "job"
    # Their own temp folder: the hard exit (tfrecords_schema.filesystems) must still run Python's exit handlers, so
    # that TensorFlow removes the autograph files it wrote there (about 50 a job were left behind before).
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "trainer.train", "--data", f"s3://{s3_server.bucket}/converted", "--job_dir", str(job),
           "--task", "expr", "--epochs", "1", "--steps_per_epoch", "2", "--batch_size", "2", "--seq_len", "4",
           "--cnn_width", "0.25", "--feature_dim", "16", "--rnn_units", "8"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (job / "export" / "model.keras").is_file()
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["expression"]["frames"] > 0

    # Evaluating the exported model on the s3:// data also exits 0.
    done = subprocess.run([sys.executable, "-m", "trainer.evaluation.evaluate", "--model", str(job), "--data",
                           f"s3://{s3_server.bucket}/converted", "--report_dir", str(tmp_path / "eval")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["expression"] == metrics["expression"]
    # Reports for a bucket that does not exist: refused before the split is scored (it failed at the very end).
    done = subprocess.run([sys.executable, "-m", "trainer.evaluation.evaluate", "--model", str(job), "--data",
                           f"s3://{s3_server.bucket}/converted", "--report_dir", "s3://no-such-bucket/r"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and "the reports cannot be written to s3://no-such-bucket/r" in done.stderr, done.stderr
    # Data that is not there: tensorflow-io answers "not found" for bad credentials or endpoints too, so the message
    # says what to check besides the path.
    done = subprocess.run([sys.executable, "-m", "trainer.evaluation.evaluate", "--model", str(job), "--data",
                           f"s3://{s3_server.bucket}/nothing-here"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0, done.stderr
    assert f"s3://{s3_server.bucket}/nothing-here/dataset_info.json not found" in done.stderr, done.stderr
    assert "refused credentials or an unreachable endpoint" in done.stderr and "S3_ENDPOINT" in done.stderr
    assert "no AWS credentials are set" not in done.stderr  # (The server's keys are in the environment.)
    assert not sorted(p.name for p in temp.iterdir())


def test_missing_hint_names_what_s3_cannot_tell_apart(tmp_path, monkeypatch):
    from tfrecords_schema.filesystems import missing_hint

    for key in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert missing_hint("/local/data") == "" and missing_hint("gs://b/data") == ""
    assert "S3_ENDPOINT" in missing_hint("s3://b/data")
    assert "no AWS credentials are set" in missing_hint("s3://b/data")
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text("[default]\naws_access_key_id = x\n")
    assert "no AWS credentials are set" not in missing_hint("s3://b/data")
    (tmp_path / ".aws" / "credentials").unlink()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    assert "no AWS credentials are set" not in missing_hint("s3://b/data")


def test_inspect_and_a_conversion_of_abaw_inputs_on_s3(tmp_path, s3_server):
    import abaw_layout as abaw
    import video_fixtures as vf

    env = {**os.environ, **s3_server.tf_env, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Annotations and videos on s3:// (both were refused: "--annotations folder 's3://...' does not exist"), read by
    # tensorflow-io in the driver and in the workers; the output local. Subprocesses: tensorflow-io aborts at exit.
    local = tmp_path / "inputs"
    vf.write_face_video(local / "videos" / "v.avi", [4] * 5)
    abaw.write_annotation(local / "annotations", "expr", "train", "v", [4] * 5)
    upload(str(local), s3_server, "inputs")
    beam_s3 = ["--s3_endpoint_url", s3_server.url, "--s3_access_key_id", "testing", "--s3_secret_access_key", "testing",
               "--s3_region_name", "us-east-1"]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "beam_jobs.convert", "--videos", f"s3://{s3_server.bucket}/inputs/videos",
                           "--annotations", f"s3://{s3_server.bucket}/inputs/annotations", "--output", str(out),
                           "--clip_length", "2", "--runner", "DirectRunner", "--direct_running_mode", "multi_processing",
                           "--direct_num_workers", "2", "--progress_every", "0", *beam_s3],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["splits"]["train"]["accounting"]["written_frames_with_face"] == 5
    # inspect --verify of a conversion on s3:// (it failed: "File system scheme 's3' not implemented").
    upload(str(out), s3_server, "converted")
    done = subprocess.run([sys.executable, "-m", "beam_jobs.inspect_dataset", f"s3://{s3_server.bucket}/converted",
                           "--verify"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "[train] 3 clips, 5 frames" in done.stdout and "verify:" in done.stdout
