"""Command-line conventions every AffectStream command shares, below both sides so each entry point can use them.

Every command takes ``--verbose`` (:func:`add_verbose_flag`): TensorFlow's C++ log at TensorFlow's own level instead
of quiet. ``affectstream`` (:mod:`affectstream.cli`) reads it before TensorFlow loads (:func:`quiet_tensorflow`).
TensorFlow code that logs through absl, which ignores that level, runs under :func:`native_log_at_tensorflow_level`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import threading

# Every command takes this flag: TensorFlow's C++ log (CUDA factory registration, oneDNN, XLA start-up lines)
# at TensorFlow's own level instead of quiet.
VERBOSE_FLAG = "--verbose"


TF_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"


TF_LOG_QUIET = "3"  # Hides TensorFlow's C++ INFO, WARNING and ERROR lines; FATAL still prints.
# FFmpeg's own log inside OpenCV ("moov atom not found", "Invalid NAL unit size"), which the commands report in their
# own words (unreadable media, frames that do not decode): quiet (AV_LOG_QUIET) unless --verbose or set by the user.
FFMPEG_LOG_LEVEL_VARIABLE = "OPENCV_FFMPEG_LOGLEVEL"
FFMPEG_LOG_QUIET = "-8"


_OFF_WORDS = ("0", "false", "no", "off")  # A --verbose value that turns it off.

_command: str | None = None  # "affectstream COMMAND" while affectstream's dispatcher runs one (set_command).


def set_command(prog: str | None) -> None:
    """Names the command the dispatcher runs (``affectstream convert``), for :func:`command_prog`; None: none."""
    global _command
    _command = prog


_terminated = threading.Event()


@contextlib.contextmanager
def sigterm_unwinds():
    """Within: SIGTERM (a scheduler, ``kill``) unwinds the command as Ctrl-C does (a ``KeyboardInterrupt``, which every
    command already cleans up after: staging folders removed, locks released, Beam's forms of it recognised), and
    :func:`interruption` says it was SIGTERM, for the message and the exit status (143, 128 + 15). Without it a
    terminated conversion left its staging folder, its lock and its Beam workers behind. A second SIGTERM ends the
    process at once. Python runs the handler between bytecodes, so a process blocked in a native call (a TensorFlow op)
    unwinds only when the call returns: the conversion uses this while its pipeline runs, training (which saves a
    checkpoint on the way out) while it trains, and ``affectstream`` around every command (its staging folders and
    temporary files are removed as after Ctrl-C). The previous handler is back after (a caller keeps its own); off
    the main thread, where Python takes no handler, nothing changes.
    """
    import signal

    def terminate(signum, _frame) -> None:
        _terminated.set()
        signal.signal(signum, signal.SIG_DFL)  # A second SIGTERM ends the process, clean-up or not.
        # Ctrl-C reaches the whole process group; SIGTERM only this process. Its descendants (Beam's worker
        # processes) are ended too, also those started while the runner unwinds: a worker still starting up otherwise
        # waited for ever for a runner that had stopped, and the runner for it (4 of 8 kills in the first second of a
        # pipeline). SIGTERM, not SIGINT: a job started in the background ignores SIGINT, and its children with it.
        threading.Thread(target=_end_descendants, name="end-descendants", daemon=True).start()
        _quiet_ended_workers_from_now()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminated.clear()
    _workers_ended.clear()  # A new run: its runner threads' errors are real until it is interrupted.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_said_once():
    """Within: an interrupt (Ctrl-C, or SIGTERM under :func:`sigterm_unwinds`) leaves the command's one line about it
    as the runner's only output, not Beam's tracebacks.

    - Beam's log of a ``KeyboardInterrupt`` that stopped a step running in this process (``KeyboardInterrupt [while
      running '...']`` and its traceback: ``--direct_running_mode in_memory``, one worker) is dropped.
    - On Ctrl-C, the runner's threads that see the worker processes end (``Worker subprocess exited with return code
      -2``, the control stream's ``grpc.RpcError``) no longer print theirs, as after a SIGTERM.

    A terminal's Ctrl-C also reaches each worker process (the whole foreground process group), and each still prints
    its own ``KeyboardInterrupt`` traceback: Beam starts them through ``/bin/sh -c``, which clears a blocked signal
    mask, and an ignored SIGINT cannot be handed to them alone without the runner missing Ctrl-C itself.
    """
    import logging
    import signal

    beam_log = logging.getLogger(BEAM_STEP_LOGGER)
    beam_log.addFilter(_drop_interrupt_tracebacks)
    handled = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if handled:
        _workers_ended.clear()  # A new run: its runner threads' errors are real until it is interrupted.

    def interrupt(signum, frame) -> None:
        _quiet_ended_workers_from_now()
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as Ctrl-C always gave

    previous = signal.signal(signal.SIGINT, interrupt) if handled else None
    try:
        yield
    finally:
        if handled:
            signal.signal(signal.SIGINT, previous)
        beam_log.removeFilter(_drop_interrupt_tracebacks)


# The logger with which Beam logs an exception raised in a step, with its traceback (apache_beam/runners/common.py).
BEAM_STEP_LOGGER = "apache_beam.runners.common"


def _drop_interrupt_tracebacks(record) -> bool:
    """A logging filter: False for a record carrying a ``KeyboardInterrupt`` (Beam's log of a step it stopped)."""
    kind = record.exc_info[0] if record.exc_info else None
    return not (kind is not None and issubclass(kind, KeyboardInterrupt))


# Threads of Beam's local runner that raise as the worker processes end (fn_api_runner/worker_handlers.py): the one
# that waits for a worker process it started, and the one that reads a worker's control stream.
BEAM_WORKER_THREAD = "run_worker"
BEAM_CONTROL_THREAD = "beam_control_read"


# Set by an interrupt (SIGTERM or Ctrl-C) until the next run starts: the runner's threads raise as the worker
# processes end, also after the command's context has exited, so it is not cleared on the way out.
_workers_ended = threading.Event()


def _quiet_ended_workers_from_now() -> None:
    """Drops the runner's thread errors of the worker processes ending (:func:`_quiet_ended_workers`) from now until
    the next run. The hook is installed once per process: wrapping it again on each interrupt nested one hook per
    interrupt, and a hook that stayed on hid a later run's real worker crash (``return code -9``: killed for memory)."""
    _workers_ended.set()
    if not getattr(threading.excepthook, "quiets_ended_workers", False):
        threading.excepthook = _quiet_ended_workers(threading.excepthook)


def _quiet_ended_workers(hook):
    """``threading.excepthook`` once a SIGTERM or Ctrl-C has ended the worker processes: the runner's thread waiting
    for each one raises as it sees it end (``RuntimeError: Worker subprocess exited with return code -15``), and the
    one reading its control stream may too (``grpc.RpcError``), which printed a traceback per worker before the
    command's one line. Those are dropped; any other thread's error goes to ``hook``."""
    def excepthook(args) -> None:
        name = args.thread.name if args.thread is not None else None
        worker_ending = ((name == BEAM_WORKER_THREAD and issubclass(args.exc_type, RuntimeError))
                         or (name == BEAM_CONTROL_THREAD and args.exc_type.__name__ == "RpcError"))
        if not (worker_ending and _workers_ended.is_set()):
            hook(args)

    excepthook.quiets_ended_workers = True
    return excepthook


def _descendants() -> list[int]:
    """The pids of this process's children and theirs, parents first (Linux ``/proc``; none elsewhere). Beam starts its
    workers through a shell (``/bin/sh -c python -m ...``), which does not pass a signal on to the worker."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # (Gone meanwhile.)
            fields = stat[stat.rfind(b")") + 2:].split()  # After "pid (name) ": state, then the parent's pid.
            if len(fields) > 1:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [os.getpid()]
    while queue:
        children = parents.get(queue.pop(0), [])
        found += children
        queue += children
    return found


def _end_descendants(rounds: int = 60, every_s: float = 0.5) -> None:
    """Sends SIGTERM to this process's descendants, again every ``every_s`` for ``rounds`` rounds (the runner may start
    a worker while it unwinds); a daemon thread, so it ends with the process."""
    import signal
    import time

    for _ in range(rounds):
        for pid in _descendants():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(every_s)


def interruption() -> tuple[str, int]:
    """``(word, exit status)`` of the last ``KeyboardInterrupt``: ``("terminated", 143)`` when :func:`sigterm_unwinds`
    raised it for a SIGTERM, else ``("interrupted", 130)`` (Ctrl-C: the shell's code for a process ended by SIGINT)."""
    return ("terminated", 143) if _terminated.is_set() else ("interrupted", 130)


def command_prog(module: str) -> str:
    """The name a command's usage and errors give it: ``affectstream COMMAND`` through the dispatcher, else
    ``python -m MODULE`` (each command module runs both ways)."""
    return _command or f"python -m {module}"


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """Adds ``--verbose`` to a command's parser (the flag acts in :func:`quiet_tensorflow`, before TF loads)."""
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help=f"show TensorFlow's C++ log (quiet unless this or {TF_LOG_LEVEL_VARIABLE} is set)")


def verbose_requested(argv: list[str]) -> bool:
    """Whether ``argv`` turns ``--verbose`` on; the last one counts, as in argparse.

    ``--verbose`` alone is on; a value (``affectstream train`` takes one: ``--verbose false``,
    ``--verbose=off``) is off when it is 0, false, no or off.
    """
    verbose = False
    for i, arg in enumerate(argv):
        if arg == VERBOSE_FLAG:
            verbose = (argv[i + 1] if i + 1 < len(argv) else "").strip().lower() not in _OFF_WORDS
        elif arg.startswith(VERBOSE_FLAG + "="):
            verbose = arg.split("=", 1)[1].strip().lower() not in _OFF_WORDS
    return verbose


def quiet_tensorflow(argv: list[str]) -> None:
    """Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it or passed ``--verbose`` (then TF's default, 0), and
    quiets FFmpeg's log inside OpenCV the same way (:data:`FFMPEG_LOG_LEVEL_VARIABLE`).

    Must run before TensorFlow is imported: its C++ log reads the variable once, at load time. Without it a
    machine with no GPU prints a screen of CUDA "Unable to register ... factory" errors on every command.
    """
    if not verbose_requested(argv):
        os.environ.setdefault(TF_LOG_LEVEL_VARIABLE, TF_LOG_QUIET)
        os.environ.setdefault(FFMPEG_LOG_LEVEL_VARIABLE, FFMPEG_LOG_QUIET)


# Parts of TensorFlow that log through absl (TF Lite's converter, XLA) ignore TF_CPP_MIN_LOG_LEVEL. Their lines start
# with the severity letter (I, W, E, F) and the date. TF Lite's interpreter logs through its own minimal logger
# ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."), in the form absl uses before it is set up.
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} ")
_NAMED_LINE = re.compile(r"^(INFO|WARNING|ERROR|FATAL): ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_FD_SWAP = threading.RLock()  # fd 2 is the process's: one swap at a time (nested uses in one thread are fine)


class _LineFilter:
    """Decides line by line what passes at ``level``; a line of neither logger follows the logger's line before it
    (the rest of a multi-line message), and is shown when there is none."""

    def __init__(self, level: int):
        self._level, self._shown = level, True

    def shown(self, line: str) -> bool:
        if found := _ABSL_LINE.match(line) or _NAMED_LINE.match(line):
            self._shown = _SEVERITY[found.group(1)[0]] >= self._level
        return self._shown


def _log_level() -> int:
    try:
        return int(os.environ.get(TF_LOG_LEVEL_VARIABLE, "0") or 0)
    except ValueError:  # not a level this can compare: everything passes, as without the variable
        return 0


def _forward(read_fd: int, write_fd: int, level: int, held: list[bytes]) -> None:
    """Passes the lines arriving on ``read_fd`` to ``write_fd`` as they come (a crash loses none of what was
    shown), keeping the ones held back in ``held``."""
    keep, pending = _LineFilter(level), b""

    def route(line: bytes) -> None:
        if keep.shown(line.decode("utf-8", "replace")):
            os.write(write_fd, line)
        else:
            held.append(line)

    while chunk := os.read(read_fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            route(line + b"\n")
    if pending:  # a last line without its newline
        route(pending)


@contextlib.contextmanager
def native_log_at_tensorflow_level():
    """Passes on the native stderr of the block as TF_CPP_MIN_LOG_LEVEL would, for TensorFlow's code that ignores it.

    TF Lite's converter logs through absl, and its interpreter through a logger of its own, which both ignore the
    variable: every export printed its "Ignored output_format" warnings and a GPU count, and every interpreter a
    line on its XNNPACK delegate. Here their lines below the level are held back, and so is every line that follows
    one of them up to the next such line (the rest of a multi-line message; anything else written in the block then
    too); the other lines pass as they come, and the held ones follow when the block raises. Without
    the variable (TensorFlow's default, 0: ``--verbose``), or where stderr cannot be swapped, it does nothing.
    """
    level = _log_level()
    if level <= 0:
        yield
        return
    with _FD_SWAP:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, AttributeError, ValueError):  # no stderr to swap (closed, or None)
            yield
            return
        read_fd, write_fd = os.pipe()
        held: list[bytes] = []
        reader = threading.Thread(target=_forward, args=(read_fd, saved, level, held), daemon=True,
                                  name="native-log-filter")
        reader.start()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        failed = True
        try:
            yield
            failed = False
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)  # the pipe's last writer gone: the reader sees its end
            reader.join(timeout=10)
            if not reader.is_alive():  # (else a child process kept the pipe open: the reader keeps both fds)
                os.close(read_fd)
                os.close(saved)
            if failed and held:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(held))


def first_of(items, limit: int, sep: str = ", ") -> str:
    """The first ``limit`` of ``items`` joined by ``sep``, then "and N more" for the rest: how a message names a list
    that may be long."""
    items = [str(item) for item in items]
    return sep.join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


_TF_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_TF_TRAILER = re.compile(r"\s*\[\[\{\{node .*|\s*\[Op:\w+\].*", re.S)


def tidy_tf_message(message: str) -> str:
    """A TensorFlow ``OpError`` message without its graph context: the ``{{function_node ...}}`` markers, the
    ``[[{{node ...}}]]`` lines and the ``[Op:IteratorGetNext] name:`` trailer (what is left is the failure itself)."""
    return _TF_TRAILER.sub("", _TF_FUNCTION_NODE.sub("", message)).strip() or message.strip()
