"""The training input on a tf.data service: a dispatcher and two workers on loopback, started by the command.

The servers run in an `affectstream data-service` process, not in the test process: TensorFlow's ``WorkerServer.stop``
holds the GIL while it waits for the worker's tasks, and stopping in-process servers at module teardown took from
nothing to 59 s on a loaded machine (6-7 s in two of four runs beside two busy cores). The command's Ctrl-C ends its
process at once (:func:`trainer.input.data_service.run`), and it runs the same ``start_local`` servers.
"""

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from trainer_data import write_dataset

from trainer import train
from trainer.input import data_service
from trainer.input import pipeline as trainer_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}  # The command, run from this checkout.


def free_port_run(n: int) -> int:
    """A port P with P .. P + n - 1 all free on loopback (the dispatcher's and its workers')."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    # Enough windows that 400 batches of 3 are all different (the stream reads pixels only: augmentation runs in
    # the model, so two draws of the same windows are the same batch), yet small.
    info = write_dataset(root, num_clips_per_class={"A": 8, "B": 6}, num_validation_clips_per_class=2,
                         clip_length=16, crop_size=16, seed=2)
    return root, info


def start_command(port: int) -> tuple[subprocess.Popen, str]:
    """`affectstream data-service` on ``port`` (2 workers) and the address it prints once it serves.

    Started with SIGINT ignored, as a background job of a shell script starts it (and as the suite runs when launched
    that way): the command must still stop on it.
    """
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "affectstream.cli", "data-service",
                             "--port", str(port), "--workers", "2"], cwd=REPO, env=COMMAND_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    line = ""
    deadline = time.time() + 120
    while "train with --data_service" not in line and time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("the data-service command ended early")
    if "train with --data_service" not in line:  # Not serving after 120 s: leave no server process behind.
        proc.kill()
        raise AssertionError(f"the data-service command did not serve within 120 s:\n{proc.communicate()[0][-4000:]}")
    return proc, re.search(r"--data_service (\S+)", line).group(1)


def interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C to the command; its output. Fails (with every thread's stack) when it is still running 60 s later."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:  # Where it hangs: -X faulthandler prints every thread's stack on SIGABRT.
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"data-service did not end within 60 s of Ctrl-C:\n{proc.communicate()[0][-4000:]}")


@pytest.fixture(scope="module")
def service():
    """The address of a dispatcher and two workers serving from their own process (see the module docstring)."""
    proc, address = start_command(free_port_run(3))
    try:
        yield address
    finally:
        if proc.poll() is None:
            interrupt(proc)


def test_service_batches_come_from_both_workers_each_with_its_own_seeds(data, service):
    root, info = data
    kwargs = {"task": "expr", "seq_len": 4, "batch_size": 3, "seed": 5}
    in_process = [images.numpy().tobytes()
                  for images, _, _ in trainer_input.make_train_dataset(root, info, **kwargs).take(400)]
    assert len(set(in_process)) == len(in_process)
    served = trainer_input.make_train_dataset(root, info, data_service=service,
                                              data_service_job="two-workers", **kwargs)
    # Worker 0 runs exactly the in-process stream of the seed, worker 1 its own one. Which worker answers
    # first depends on timing (one may deliver dozens of batches before the other has started): read until
    # both have given a few.
    positions, seen = [], set()
    for images, targets, _ in served.take(300):
        assert images.dtype == np.uint8 and images.shape == (3, 4, 16, 16, 3)
        assert set(targets["expression"].numpy().ravel().tolist()) <= {0, 1}
        key = images.numpy().tobytes()
        assert key not in seen  # no batch twice
        seen.add(key)
        positions.append(in_process.index(key) if key in in_process else None)
        if sum(p is None for p in positions) >= 3 and sum(p is not None for p in positions) >= 3:
            break
    from_worker0 = [p for p in positions if p is not None]
    assert len(from_worker0) >= 3 and len(positions) - len(from_worker0) >= 3, positions
    assert from_worker0 == list(range(len(from_worker0))), positions  # in order, none skipped


def test_bad_addresses_and_skip_corrupt_are_clear_errors(data):
    root, info = data
    for address in ("localhost:5050", "grpc://localhost", "http://h:1", "grpc://h:99999"):
        with pytest.raises(ValueError, match="must look like grpc://HOST:PORT"):
            data_service.check_address(address)
    from trainer.input.records import SkippedRecords
    with pytest.raises(ValueError, match="skip_corrupt cannot count"):
        trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=2,
                                         data_service="grpc://localhost:5050", skipped=SkippedRecords())
    assert train.run(["--data", root, "--job_dir", "j", "--data_service", "localhost:1"]) == 2
    assert train.run(["--data", root, "--job_dir", "j", "--data_service", "grpc://localhost:1",
                      "--skip_corrupt"]) == 2


def test_a_dispatcher_that_is_not_there_is_said_not_waited_for_for_ever():
    import socket

    with socket.socket() as s:  # A port nothing listens on: bound, never listening.
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"no tf.data service dispatcher answers at grpc://localhost:{port}"):
            data_service.check_reachable(f"grpc://localhost:{port}", wait_seconds=1.5)


def test_a_short_training_run_reads_its_batches_through_the_service(data, service, tmp_path, caplog):
    root, _ = data
    job = tmp_path / "job"
    caplog.set_level("INFO", logger="trainer.train")
    code = train.run(["--data", root, "--job_dir", str(job), "--task", "expr", "--epochs", "1", "--steps_per_epoch",
                      "4", "--batch_size", "4", "--seq_len", "4", "--cnn_width", "0.25", "--feature_dim", "8",
                      "--rnn_units", "8", "--log_every", "2", "--data_service", service])
    assert code == 0, caplog.text[-3000:]
    assert f"training batches from the tf.data service {service}" in caplog.text
    assert "step 4/4" in caplog.text
    assert "expression" in json.loads((job / "metrics.json").read_text())


def test_data_service_command_serves_until_interrupted(data):
    root, info = data
    port = free_port_run(3)
    proc, address = start_command(port)
    try:
        assert address == f"grpc://localhost:{port}"
        batches = iter(trainer_input.make_train_dataset(root, info, task="expr", seq_len=4, batch_size=2,
                                                        data_service=address))
        images, _, _ = next(batches)
        assert images.shape == (2, 4, 16, 16, 3)
        # Ctrl-C while this client still reads (its prefetch in flight): the command ends at once all the same.
        # (TensorFlow's WorkerServer.stop holds the GIL while it waits for such streams: the command does not call it.)
        out = interrupt(proc)
        assert proc.returncode == 0 and "tf.data service stopped" in out
        with pytest.raises(ConnectionRefusedError):  # the servers ended with it
            socket.create_connection(("localhost", port), timeout=5).close()
        del batches
        gc.collect()
        # A taken port is a clear error.
        busy = free_port_run(3)
        with socket.socket() as s:
            s.bind(("", busy + 1))
            s.listen()
            taken = subprocess.run([sys.executable, "-m", "affectstream.cli", "data-service", "--port", str(busy)],
                                   check=False, cwd=REPO, env=COMMAND_ENV, capture_output=True, text=True, timeout=120)
        assert taken.returncode == 2 and f"port {busy + 1} is not free" in taken.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _leave_time_wait(port: int) -> None:
    """Leaves a closed connection in TIME_WAIT on ``port``, as a dispatcher that just stopped does (its side closed
    first), with nothing listening there any more. The listener sets SO_REUSEADDR as gRPC's do: Linux lets a bind
    with SO_REUSEADDR share the port with a TIME_WAIT connection only when that connection's socket had it too."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, _ = server.accept()
        conn.close()  # The server's side closes first: it is the side that waits in TIME_WAIT.
        client.recv(1)  # (The server's FIN.)
        client.close()
    time.sleep(0.2)


def test_a_port_in_time_wait_after_a_stopped_service_is_not_called_taken():
    # Ctrl-C ends the servers at once; the same `affectstream data-service --port P` run again right away must serve,
    # not say "port P is not free (Address already in use)" for the minute its connections wait in TIME_WAIT.
    port = free_port_run(3)
    _leave_time_wait(port)
    with socket.socket() as plain:  # The precondition: a bind without SO_REUSEADDR is refused.
        try:
            plain.bind(("", port))
        except OSError:
            pass
        else:
            pytest.skip("this system left no TIME_WAIT connection that blocks a plain bind")
    proc, address = start_command(port)
    try:
        assert address == f"grpc://localhost:{port}"
        with pytest.raises(ValueError, match=f"port {port} is not free"):  # A live server still makes it taken.
            data_service._check_free("localhost", port)
    finally:
        out = interrupt(proc)
    assert proc.returncode == 0 and "tf.data service stopped" in out


def test_a_resume_with_other_options_is_not_served_the_stream_of_a_run_that_died_at_the_same_step(
        data, service, tmp_path, caplog, monkeypatch):
    # A service job outlives the run that made it (the dispatcher keeps running), and a resume from the same
    # checkpoint has the same seed. A resume with a changed batch size (allowed on a resume) joined the dead run's job
    # and failed on its batches: "Incompatible shapes at component 0: expected [2,4,16,16,3] but got [4,...]".
    from trainer.training import progress

    root, _ = data
    caplog.set_level("INFO", logger="trainer.train")
    args = ["--data", root, "--job_dir", str(tmp_path / "job"), "--task", "expr", "--steps_per_epoch", "4",
            "--seq_len", "4", "--cnn_width", "0.25", "--feature_dim", "8", "--rnn_units", "8", "--log_every", "1",
            "--data_service", service]
    assert train.run([*args, "--epochs", "1", "--batch_size", "4"]) == 0, caplog.text[-3000:]  # checkpoint at step 4

    def killed(*_args, **_kwargs):  # (Not KeyboardInterrupt: Ctrl-C and SIGTERM save the step reached.)
        raise SystemExit("killed (kill -9) after its first step, before its next checkpoint")

    with monkeypatch.context() as patch:  # A resume that dies before its next checkpoint: its job stays behind.
        patch.setattr(progress.StepProgress, "step_done", killed)
        with pytest.raises(SystemExit):
            train.run([*args, "--epochs", "2", "--batch_size", "4"])
    gc.collect()
    caplog.clear()
    assert train.run([*args, "--epochs", "2", "--batch_size", "2"]) == 0, caplog.text[-3000:]
    assert "resumed from" in caplog.text and "step 8/8" in caplog.text


def test_a_relative_data_path_is_opened_by_the_service_workers_where_the_trainer_means_it(data, service, monkeypatch):
    # The workers run in another process started in another folder (here the command's, the repository): a relative
    # --data named no file there, and the first batch never came, with no error on either side.
    import threading

    root, info = data
    monkeypatch.chdir(os.path.dirname(root))
    relative = os.path.basename(root)
    assert not os.path.exists(os.path.join(REPO, relative))
    got = []

    def first_batch():
        batches = iter(trainer_input.make_train_dataset(relative, info, task="expr", seq_len=4, batch_size=2,
                                                        data_service=service, data_service_job="relative-path"))
        got.append(next(batches)[0].shape)

    reader = threading.Thread(target=first_batch, daemon=True)
    reader.start()
    reader.join(timeout=90)
    assert got == [(2, 4, 16, 16, 3)], "no batch within 90 s: the service workers could not open the records"


def test_the_service_job_name_follows_the_stream_not_the_other_options(tmp_path):
    # Workers of one run started with different options that do not change the stream (--verbose, --epochs) must
    # share one service job: two jobs would each serve the whole stream of the same seed, so both workers would
    # train on the same batches. An option that changes the stream (the sampling, the batch) names another job.
    from types import SimpleNamespace

    from trainer.training.config import TrainConfig
    from trainer.training.plan import JobPlan
    from trainer.training.stages import Stage

    def name(batch_size=4, data="data", clips=3, **options):
        config = TrainConfig(data=str(tmp_path / data), job_dir=str(tmp_path / "job"), task="expr", seq_len=4,
                             **options)
        info = SimpleNamespace(to_json=lambda: json.dumps({"name": "demo", "clips": clips}))
        plan = JobPlan(info=info, heads=("expression",), steps_per_epoch=4, total_steps=8, jit=False,
                       select_split="selection", eval_split="validation")
        return Stage(config, plan).data_service_job(batch_size, seed=7)

    base = name()
    assert name(verbose=True) == base and name(epochs=9) == base and name(log_every=1) == base
    assert name(sampling="natural") != base and name(batch_size=2) != base
    # --data may differ between the workers (the same storage mounted at two paths): one job still; other data, another.
    assert name(data="mnt/other-mount-of-data") == base and name(clips=4) != base
    assert base.startswith("affectstream-") and base.endswith("-seed7")


def test_a_first_batch_that_does_not_come_is_said_with_what_to_check(caplog):
    # A service worker that cannot open --data gets no records, and TensorFlow says so on neither side: the trainer
    # waited for ever and said nothing.
    caplog.set_level("WARNING", logger="trainer.train")
    late = data_service.watch_first_batch("grpc://localhost:1", "rel/data", seconds=0.05)
    late.join(timeout=5)
    said = [r.getMessage() for r in caplog.records if "the first step has not ended" in r.getMessage()]
    assert len(said) == 1 and "after 0 s. Its batch comes from the tf.data service grpc://localhost:1" in said[0]
    assert f"open --data {os.path.abspath('rel/data')} themselves" in said[0]  # (as the workers open it)
    caplog.clear()
    on_time = data_service.watch_first_batch("grpc://localhost:1", "rel/data", seconds=0.2)
    on_time.cancel()  # the first batch came
    time.sleep(0.4)
    assert not [r for r in caplog.records if "first step" in r.getMessage()]


def test_the_first_batch_warning_is_not_left_running_when_the_input_cannot_be_built(tmp_path, monkeypatch):
    # The timer started before the input was built: a failure there (an unreachable dispatcher, a bad shard) left it
    # running, and an in-process caller (the demo, bench/learning.py) was told 2 minutes later that no batch came.
    from types import SimpleNamespace

    from trainer.training import job
    from trainer.training.config import TrainConfig

    timers = []

    def watch(*args, **kwargs):
        timers.append(data_service.watch_first_batch(*args, **kwargs))
        return timers[-1]

    def unbuildable(_dataset_fn):
        raise RuntimeError("the input could not be built")

    monkeypatch.setattr(data_service, "watch_first_batch", watch)
    config = TrainConfig(data=str(tmp_path / "data"), job_dir=str(tmp_path / "job"), data_service="grpc://localhost:1")
    stage = SimpleNamespace(trains_on_features=False, data_service_job=lambda batch_size, seed: "job")
    strategy = SimpleNamespace(num_replicas_in_sync=1, distribute_datasets_from_function=unbuildable)
    plan = SimpleNamespace(total_steps=4, steps_per_epoch=2)
    with pytest.raises(RuntimeError, match="could not be built"):
        job._run_epochs(config, plan, strategy, stage, None, 0, 0, None, None, None, None)
    try:
        assert all(timer.finished.is_set() for timer in timers), "a first-batch timer left running"
    finally:
        for timer in timers:
            timer.cancel()
