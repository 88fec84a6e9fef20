"""The training input on a tf.data service, and ``affectstream data-service`` to run one locally.

Why: on a GPU host with few cores, JPEG decoding bounds the training step. With ``affectstream train
--data_service grpc://HOST:PORT`` the whole training input pipeline (read, mix, parse, decode, augment,
batch: :func:`trainer.input.pipeline.make_train_dataset`) runs on tf.data service workers, in other processes or
on other machines, and the trainer only receives finished uint8 batches. Evaluation stays in process.

Processing mode: ``ShardingPolicy.HINT`` (static sharding), chosen because the training stream is an
infinite, seeded random stream:

* every worker runs the whole stream with its *own* seeds: the dataset starts from
  ``Dataset.range(...).shard(SHARD_HINT, SHARD_HINT)`` (:func:`worker_index`), which each worker replaces
  with its index in the dispatcher's fixed worker list; the stream's seeds are moved by that index
  (:func:`trainer.input.records.stream_seed`). Worker 0 yields exactly the in-process stream of the same seed;
  worker ``i`` draws its own clips, windows and augmentations, with the same bucket weights.
* ``OFF`` ("parallel_epochs") would make every worker produce the *same* seeded stream: each batch N
  times. ``DYNAMIC`` ("distributed_epoch") hands out splits of splittable sources on demand; the bucket
  mixing (``sample_from_datasets`` over repeated per-bucket streams) and the seed streams are not
  splittable, and its order is not reproducible anyway.
* Static sharding needs the dispatcher to know its workers beforehand (``DispatcherConfig.worker_addresses``);
  :func:`start_local` and ``affectstream data-service`` configure it so.

Delivery is at most once: each batch a worker produces goes to one consumer once; batches buffered on a
worker that dies are lost, and a restarted worker starts its stream again from its beginning (static
sharding). For an infinite stream sampled with replacement neither changes what training sees in
distribution, but training is not bit-for-bit reproducible through the service: the order in which batches
of different workers arrive depends on timing. Every consumer of one job shares its batches first come,
first served: the workers of a multi-worker training run join one job (:func:`job_name`) and split it.

The workers open ``--data`` themselves, at the same path: a disk they share with the trainer, ``gs://`` or
``s3://`` (credentials in the workers' environment). ``--skip_corrupt`` is refused with the service (its
counter lives in the trainer process): verify the shards with ``affectstream inspect DATA --verify``.

Local use::

    affectstream data-service --port 5050 --workers 2        # dispatcher on 5050, workers on 5051, 5052
    affectstream train --data OUT --job_dir JOB --data_service grpc://localhost:5050 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from tfrecords_schema import storage
from tfrecords_schema.cli import add_verbose_flag, command_prog
from tfrecords_schema.filesystems import exit_hard_if_needed, register_tensorflow_io

if TYPE_CHECKING:  # TensorFlow is imported where it is used: `affectstream data-service --help` stays light.
    import tensorflow as tf

PROTOCOL = "grpc"
# Upper bound of the worker indices a stream can be given (the range that SHARD_HINT shards).
MAX_WORKERS = 1 << 20
# Heartbeat of local workers: a worker gets its task of a new job at its next heartbeat, so TensorFlow's
# default (30 s) would leave all but the first worker idle for the first half minute of a job.
LOCAL_HEARTBEAT_MS = 500
REACH_SECONDS = 30.0  # how long a job waits for the dispatcher to accept a connection before it gives up
# How long a job waits for its first step before it says what to check. The first step also traces (and with XLA
# compiles) the model and, with several workers, waits for the last to join: the message says so.
FIRST_BATCH_SECONDS = 120.0
_ADDRESS = re.compile(r"^grpc://(?P<host>[^/:]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def check_address(address: str) -> str:
    """``address`` if it is ``grpc://HOST:PORT``; raises ValueError naming the expected form otherwise."""
    match = _ADDRESS.match(address or "")
    if not match or not 0 < int(match.group("port")) < 65536:
        raise ValueError(f"data service address {address!r} must look like grpc://HOST:PORT "
                         "(the dispatcher, e.g. grpc://localhost:5050 from `affectstream data-service`)")
    return address


def check_reachable(address: str, wait_seconds: float = REACH_SECONDS) -> None:
    """Raises ValueError when nothing accepts a connection at ``address`` (``grpc://HOST:PORT``) within
    ``wait_seconds``: TensorFlow's service client would wait for ever, silently. Tries once a second, so a dispatcher
    started at the same time as the job is found."""
    match = _ADDRESS.match(check_address(address))
    host, port = match.group("host").strip("[]"), int(match.group("port"))
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ValueError(f"no tf.data service dispatcher answers at {address} ({e}; tried for "
                                 f"{wait_seconds:g} s): start one with `affectstream data-service --port {port}`, or "
                                 "check the address") from None
            time.sleep(1.0)


def watch_first_batch(address: str, data_dir: str, seconds: float = FIRST_BATCH_SECONDS) -> threading.Timer:
    """A started timer that says, once, when no batch came from the service at ``address`` within ``seconds``;
    cancel it when the first batch arrives.

    A service worker that cannot open the data (a path its machine does not have, no permission, no credentials for
    ``s3://``) gets no records, and TensorFlow 2.17 says so on neither side (not even in ``affectstream data-service
    --verbose``'s log): the client waits for the batch for ever.
    """
    def say() -> None:
        logging.getLogger("trainer.train").warning(
            "the first step has not ended after %.0f s. Its batch comes from the tf.data service %s, whose workers "
            "open --data %s themselves: one that cannot (a path its machine does not have, no permission, no "
            "credentials) gets no records while this job waits, with no error on either side; check that they can "
            "read it (a large model's first step, compiled, or a worker of this job started late can also take this "
            "long)",
            seconds, address, worker_path(data_dir))

    timer = threading.Timer(seconds, say)
    timer.daemon = True
    timer.start()
    return timer


def job_name(job_dir: str, seed: int, stream: str) -> str:
    """The service job of one training run: the same on every worker of the run, different across runs.

    ``stream`` describes what the stream is made of (the data, the options it is built from, the per-replica batch):
    a job of that name may outlive the run that made it on a dispatcher that keeps running, and a resume from the
    same checkpoint (the same ``seed``) with options changed would join the dead run's job and be served its batches
    (of another shape, or silently of another sampling).
    """
    return (f"affectstream-{zlib.crc32(job_dir.encode('utf-8')):08x}-{zlib.crc32(stream.encode('utf-8')):08x}"
            f"-seed{seed}")


def worker_path(data_dir: str) -> str:
    """``data_dir`` as the service workers open it: a local path made absolute. The workers run in another process,
    started in another folder (or on another machine sharing the disk): a relative ``--data`` named no file there,
    and the training waited for its first batch for ever, with no error on either side."""
    return data_dir if storage.is_url(data_dir) else os.path.abspath(data_dir)


def worker_index() -> tf.data.Dataset:
    """One int64 element: the index of the tf.data service worker running the dataset (HINT sharding only).

    Outside a HINT-sharded service job iterating it fails (``SHARD_HINT`` is then unresolved).
    """
    import tensorflow as tf

    hint = tf.data.experimental.SHARD_HINT
    return tf.data.Dataset.range(MAX_WORKERS).shard(hint, hint).take(1)


def read_from_service(dataset: tf.data.Dataset, address: str, *, job_name: str | None) -> tf.data.Dataset:
    """``dataset`` run on the tf.data service at ``address`` (``ShardingPolicy.HINT``), read from there.

    Elements travel uncompressed: decoded uint8 frames hardly compress, and compressing costs worker CPU,
    the resource the service is there to add.
    """
    from tensorflow.data.experimental import service

    check_reachable(address)
    return dataset.apply(service.distribute(processing_mode=service.ShardingPolicy.HINT,
                                            service=check_address(address), job_name=job_name, compression=None))


# --------------------------------------------------------------------------------------------------
# A local dispatcher and its workers.


@dataclasses.dataclass
class LocalService:
    """A dispatcher and its workers running in this process (:func:`start_local`).

    Attributes:
        address: ``grpc://HOST:PORT`` of the dispatcher (what ``--data_service`` takes).
        worker_addresses: ``HOST:PORT`` of each worker, in index order.
    """

    address: str
    worker_addresses: list[str]
    dispatcher: object
    workers: list

    def stop(self) -> None:
        """Stops the workers, then the dispatcher."""
        for worker in self.workers:
            worker.stop()
        self.dispatcher.stop()


def _check_free(host: str, port: int) -> None:
    """Raises ValueError when a server listens on ``port`` (or it cannot be bound at all).

    The probe binds with ``SO_REUSEADDR``, as the gRPC servers do: connections of a server that just stopped linger
    in TIME_WAIT for a minute, and a plain bind would call the port taken although the servers bind it fine (a
    listening socket still refuses the bind).
    """
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            raise ValueError(f"port {port} is not free ({e.strerror}): choose another --port") from e


def start_local(port: int, num_workers: int, host: str = "localhost") -> LocalService:
    """Starts a dispatcher on ``port`` and ``num_workers`` workers on ``port + 1 ...``, in this process.

    Args:
        port: The dispatcher's port; the workers take the next ``num_workers`` ports.
        num_workers: Workers (>= 1).
        host: The name under which the trainer reaches this machine (the workers register as
            ``host:port``); ``localhost`` when the trainer runs here.

    Raises:
        ValueError: bad port or worker count, or a port that is taken.
    """
    from tensorflow.data.experimental import service

    if num_workers < 1:
        raise ValueError(f"--workers must be >= 1, got {num_workers}")
    if port < 1 or port + num_workers > 65535:
        raise ValueError(f"--port must leave room for the workers' ports below 65536, got {port}")
    ports = [port + 1 + i for i in range(num_workers)]
    for p in [port, *ports]:
        _check_free(host, p)
    worker_addresses = [f"{host}:{p}" for p in ports]
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=port, worker_addresses=worker_addresses))
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=f"{host}:{port}", worker_address=a,
                                                         port=p, heartbeat_interval_ms=LOCAL_HEARTBEAT_MS))
               for a, p in zip(worker_addresses, ports)]
    return LocalService(address=f"{PROTOCOL}://{host}:{port}", worker_addresses=worker_addresses,
                        dispatcher=dispatcher, workers=workers)


def build_parser() -> argparse.ArgumentParser:
    """The ``affectstream data-service`` arguments."""
    p = argparse.ArgumentParser(
        prog=command_prog("trainer.input.data_service"),
        description="Run a tf.data service dispatcher and workers for `affectstream train --data_service` "
                    "until interrupted (Ctrl-C or SIGTERM).")
    p.add_argument("--port", type=int, required=True, help="dispatcher port; the workers use the next N ports")
    p.add_argument("--workers", type=int, default=2, help="worker servers to start (default 2)")
    p.add_argument("--host", default="localhost",
                   help="name under which trainers reach this machine (default localhost: trainers on this host)")
    add_verbose_flag(p)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Starts the servers, prints the address to pass to ``--data_service``, serves until interrupted.

    Returns 2 for invalid options (a port that is taken included). After Ctrl-C / SIGTERM the process exits 0 at
    once (:func:`_exit_serving`).
    """
    args = build_parser().parse_args(argv)
    try:  # The workers open the datasets' files themselves, s3:// ones too (its file system must be in this process).
        register_tensorflow_io()
    except ImportError:
        pass  # local and gs:// data only: TensorFlow's own file systems
    try:
        local = start_local(args.port, args.workers, args.host)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C (SIGINT) stops the command whatever it inherited. A process started as a shell script's background job
    # (`cmd &` without job control) inherits SIGINT ignored, and Python then installs no handler for it: `kill -INT`
    # went unheard (the Ctrl-C test hung in full test runs launched that way).
    try:  # (From the handler on, inside the try: a Ctrl-C right after the address is printed also stops cleanly.)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"tf.data service: dispatcher {local.address}, workers {', '.join(local.worker_addresses)}; "
              f"train with --data_service {local.address} (Ctrl-C stops)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    _exit_serving()


def _exit_serving() -> NoReturn:
    """Ends the process, and with it the servers, without calling their ``stop()``.

    TensorFlow binds ``WorkerServer.stop`` without releasing the GIL (``server_lib_wrapper.cc``), and a worker's stop
    waits for the streams of clients still connected: a stop running in a thread with a timed ``join`` can hold the
    GIL past the timeout, so that nothing else runs until the streams end. Exiting ends the servers as a lost machine
    would: connected clients see their stream fail (UNAVAILABLE), and the dispatcher keeps no state to lose (it runs
    without a ``work_dir``).
    """
    print("tf.data service stopped", flush=True)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)  # (Not sys.exit: the interpreter's exit would destroy the servers, and with them call stop.)


def main() -> None:
    """``python -m trainer.input.data_service``."""
    sys.exit(exit_hard_if_needed(run()))  # (tensorflow-io, registered for the workers, aborts at interpreter exit)


if __name__ == "__main__":
    main()
