"""Run locks (issue 11 point 2): one holder, refusals that name it, stale takeover, release of its own lock only."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from tfrecords_schema.locks import (
    LOCK_FILENAME,
    LockError,
    LockHeldError,
    lock_folder,
    lock_output,
    output_lock_path,
    pid_alive,
    read_lock,
)

# Forked children share the parent's imports (no second TensorFlow import) and start at the same time.
FORK = multiprocessing.get_context("fork")
# Python 3.12 warns on fork() in a process with threads (TensorFlow's): the children run only file-system calls.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _contend(folder, barrier, results, hold_s):
    barrier.wait()
    try:
        with lock_folder(folder, command="contender"):
            results.put(("won", os.getpid()))
            time.sleep(hold_s)  # Hold it while the others try.
    except LockHeldError as e:
        results.put(("refused", e.holder.pid, e.holder.host, str(e)))


def dead_pid():
    """The pid of a process that has surely exited (started and waited for here)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    pid = int(child.stdout)
    assert not pid_alive(pid)
    return pid


def write_lock(folder, **fields):
    info = {"host": socket.gethostname(), "pid": 1, "started": "2024-01-01T00:00:00+00:00", "command": "old run",
            "token": "f" * 32, **fields}
    path = os.path.join(folder, LOCK_FILENAME)
    with open(path, "w") as f:
        json.dump(info, f)
    return path


def test_processes_racing_for_one_lock_exactly_one_wins_the_others_name_it(tmp_path):
    n = 4
    barrier, results = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=_contend, args=(str(tmp_path), barrier, results, 1.0)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    winners = [g[1] for g in got if g[0] == "won"]
    refused = [g for g in got if g[0] == "refused"]
    assert len(winners) == 1 and len(refused) == n - 1
    for _, holder_pid, holder_host, message in refused:
        assert holder_pid == winners[0]
        assert holder_host == socket.gethostname()
        assert f"pid {winners[0]}" in message and socket.gethostname() in message and "since" in message
    assert not (tmp_path / LOCK_FILENAME).exists()  # The winner released it.


def test_a_held_lock_refuses_a_second_process_until_released(tmp_path):
    with lock_folder(str(tmp_path), command="first run") as lock:
        held = read_lock(str(tmp_path))
        assert (held.pid, held.host, held.command) == (os.getpid(), socket.gethostname(), "first run")
        assert held.started == lock.info.started
        barrier, results = FORK.Barrier(1), FORK.Queue()
        child = FORK.Process(target=_contend, args=(str(tmp_path), barrier, results, 0.0))
        child.start()
        outcome = results.get(timeout=30)
        child.join(timeout=30)
        assert outcome[0] == "refused" and outcome[1] == os.getpid()
        assert "first run" in outcome[3]
    assert read_lock(str(tmp_path)) is None
    with lock_folder(str(tmp_path)):  # Free again once released.
        pass


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    pid = dead_pid()
    write_lock(str(tmp_path), pid=pid, started="2024-05-06T07:08:09+00:00")
    with lock_folder(str(tmp_path), command="new run") as lock:
        assert len(lock.messages) == 1
        assert "stale" in lock.messages[0] and f"pid {pid}" in lock.messages[0]
        assert "2024-05-06T07:08:09+00:00" in lock.messages[0]
        assert read_lock(str(tmp_path)).pid == os.getpid()
    assert read_lock(str(tmp_path)) is None
    assert os.listdir(tmp_path) == []  # Neither the lock nor the takeover guard is left behind.


def test_lock_of_another_host_is_never_judged_stale(tmp_path):
    write_lock(str(tmp_path), host="some-other-machine", pid=dead_pid())
    with pytest.raises(LockHeldError, match="some-other-machine"):
        lock_folder(str(tmp_path)).acquire()
    assert read_lock(str(tmp_path)).host == "some-other-machine"  # Left as it was.


def test_release_never_removes_a_lock_it_does_not_own(tmp_path):
    lock = lock_folder(str(tmp_path)).acquire()
    path = write_lock(str(tmp_path), pid=os.getpid(), token="0" * 32)  # Replaced behind our back.
    lock.release()
    assert os.path.exists(path)
    assert read_lock(str(tmp_path)).token == "0" * 32


def test_lock_is_released_when_the_block_raises(tmp_path):
    with pytest.raises(KeyError), lock_folder(str(tmp_path)):
        raise KeyError("boom")
    assert read_lock(str(tmp_path)) is None


def test_output_lock_lives_inside_a_local_output_folder(tmp_path):
    out = tmp_path / "converted"
    with lock_output(str(out)) as lock:
        # Inside: the swap moves entries, never the folder, which may be a mount point with a read-only parent.
        assert lock.path == str(out / ".affectstream.lock")
        with pytest.raises(LockHeldError):
            lock_output(str(out) + "/").acquire()
    assert os.listdir(out) == []
    assert output_lock_path("s3://bucket/converted") == "s3://bucket/.converted.affectstream.lock"  # Beside there.


def test_unreadable_and_old_empty_lock_files(tmp_path):
    path = tmp_path / LOCK_FILENAME
    path.write_text("not json")
    with pytest.raises(LockError, match="not an affectstream lock"):
        lock_folder(str(tmp_path)).acquire()
    assert path.read_text() == "not json"  # Never removed: not ours.
    path.write_text("")
    old = time.time() - 3600
    os.utime(path, (old, old))  # A run killed between creating and writing its lock, an hour ago.
    with lock_folder(str(tmp_path)) as lock:
        assert "empty lock file" in lock.messages[0]


def test_a_live_pid_is_another_process_only_when_its_namespace_is_the_holders():
    # Containers that share a host name and a volume (host networking) see their own pids only: a holder's pid
    # alive in another pid namespace is no sign that the holder is gone (its lock and staging folder were taken).
    from tfrecords_schema.locks import holder_alive, process_identity

    me = os.getpid()
    boot, ticks, namespace = process_identity(me).split()
    assert holder_alive(me, f"{boot} {ticks} {namespace}")
    assert not holder_alive(me, f"{boot} {int(ticks) - 1} {namespace}")  # the same pid used again: the holder died
    assert holder_alive(me, f"{boot} {int(ticks) - 1} pid:[1]")  # another container's process: cannot be told
    assert holder_alive(me, "")  # a lock without an identity: the pid alone decides
