"""What a training job checkpoints, and how it resumes.

:class:`TrainState` holds the variables of a job (step, evaluated epochs, best score and epoch) next to
the model and optimizer, and two ``tf.train.CheckpointManager`` s:

* ``JOB/checkpoints``: model, optimizer and every variable, every ``--checkpoint_every`` steps and at
  every epoch end; a resumed run restores the latest one;
* ``JOB/best``: the model of the best epoch with its own score and epoch. It is the truth for the export
  and the report: a run killed between saving ``best/`` and the next checkpoint resumes from the newer
  best epoch, so the reported best epoch always matches the exported model.

Only the chief writes to the job directory; other workers write their (collective) saves to temporary
directories, removed by :meth:`TrainState.close`.

Every regular checkpoint carries the job's fingerprint (:mod:`trainer.training.fingerprint`: a hash of the data and
the options that shape the model). :meth:`TrainState.restore` reads it before restoring anything and
refuses a resume under another one, naming each differing value on both sides, unless the job allows a
data change (``--allow_data_change``). The early-stopping count (:mod:`trainer.training.schedules`) is
``epochs_done - best_epoch``, both checkpointed here.
"""

from __future__ import annotations

import json
import logging
import math
import re

import tensorflow as tf

from tfrecords_schema import join_path
from trainer.common.errors import TrainingError
from trainer.model.export import CHECKPOINTS_DIRNAME  # (declared there: predict names it without TensorFlow)
from trainer.training import distribution, schedules
from trainer.training.fingerprint import differences, unrecorded_selection, unrestorable
from trainer.training.job_files import BEST_DIRNAME

log = logging.getLogger("trainer.train")

FINGERPRINT_KEY = "fingerprint/.ATTRIBUTES/VARIABLE_VALUE"


def read_best_checkpoint(best_dir: str) -> tuple[int, float, str] | None:
    """``(best_epoch, best_score, path)`` stored in the latest checkpoint of ``best_dir``; None if there is none.

    Raises:
        TrainingError: the best checkpoint does not hold its epoch and score (written by an older version).
    """
    path = tf.train.latest_checkpoint(best_dir)
    if path is None:
        return None
    reader = tf.train.load_checkpoint(path)
    try:
        epoch = int(reader.get_tensor("best_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
        score = float(reader.get_tensor("best_score/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.NotFoundError, ValueError) as e:
        raise TrainingError(f"best checkpoint {path} holds no best_epoch/best_score (written by an older "
                            f"version?): use a new --job_dir") from e
    return epoch, score, path


def saved_checkpoints(checkpoint_dir: str) -> list[str]:
    """The checkpoints of ``checkpoint_dir``, newest (highest number) first: those its ``checkpoint`` file lists and
    those whose index file is there (``tf.train.latest_checkpoint`` gives None when the newest lost its index file or
    the ``checkpoint`` file is missing or unreadable, which read as "no checkpoint" and started the job over)."""
    found = set()
    state = tf.train.get_checkpoint_state(checkpoint_dir)  # (None when missing or unparsable)
    if state is not None:
        found.update(state.all_model_checkpoint_paths or [state.model_checkpoint_path])
    if tf.io.gfile.isdir(checkpoint_dir):  # (Listed, not globbed: a job folder named "exp[1]" is no pattern.)
        found.update(join_path(checkpoint_dir, name[:-len(".index")]) for name in tf.io.gfile.listdir(checkpoint_dir)
                     if _CHECKPOINT_INDEX.match(name))

    def number(path: str) -> int:
        match = re.search(r"-(\d+)$", path)
        return int(match.group(1)) if match else -1

    return sorted((p for p in found if p), key=number, reverse=True)


_CHECKPOINT_INDEX = re.compile(r"^ckpt-\d+\.index$")  # (tf.train.CheckpointManager's names)
# What a checkpoint's own damage raises (a truncated file: IndexError "Read less bytes", DataLossError; a file gone:
# NotFoundError). Other errors (a store unavailable, permission denied) say nothing about the files: passing over a
# checkpoint for them resumed from an older one, and dropped best/ for the next epoch to replace.
DAMAGE_ERRORS = (IndexError, tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError,
                 tf.errors.InvalidArgumentError)


def _error_text(error: BaseException) -> str:
    """What an error says (a TensorFlow error's own message, without its op context)."""
    return str(getattr(error, "message", None) or error).strip()


def _unreadable(path: str, error: BaseException) -> TrainingError:
    """The error for a checkpoint that could not be read for another reason than damage (see DAMAGE_ERRORS)."""
    return TrainingError(f"checkpoint {path} could not be read ({type(error).__name__}: {_error_text(error)[:300]}); "
                         "nothing was changed: run the same command again once the storage answers")


def _damage(path: str, error: BaseException) -> str:
    """``"PATH (Type: first line)"``: a checkpoint that cannot be read, for the warning or the error."""
    text = _error_text(error)
    return f"{path} ({type(error).__name__}: {text.splitlines()[0] if text else 'unreadable'})"


class TrainState:
    """The checkpointed state of one job (see the module docstring).

    Args:
        model: The training model.
        optimizer: Its optimizer (built).
        job_dir: The job directory.
        role: This process's :class:`trainer.training.distribution.Role`.
        keep_checkpoints: Regular checkpoints kept.
        fingerprint: The job's fingerprint (:func:`trainer.training.fingerprint.job_fingerprint`), stored in every
            checkpoint; None stores none and checks nothing.
        allow_data_change: Resume even when the checkpoint's fingerprint differs (logged as a warning); the
            new fingerprint is stored from then on.
    """

    def __init__(self, model, optimizer, job_dir: str, role: distribution.Role, keep_checkpoints: int,
                 fingerprint: dict | None = None, allow_data_change: bool = False):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_done")
        self.best_score = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best_score")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self._fingerprint = fingerprint
        self._allow_data_change = allow_data_change
        self._no_best_since = 0  # The epoch best/ was found lost at (restore): the early-stopping count starts there.
        state = {"model": model, "optimizer": optimizer, "step": self.step, "epochs_done": self.epochs_done,
                 "best_score": self.best_score, "best_epoch": self.best_epoch}
        # Restored without the fingerprint (checked apart, and a resumed job keeps its current one) ...
        self._restorable = tf.train.Checkpoint(**state)
        # ... and saved with it.
        if fingerprint is not None:
            with tf.device("/cpu:0"):  # a string variable; kept off accelerators
                state["fingerprint"] = tf.Variable(json.dumps(fingerprint, sort_keys=True), dtype=tf.string,
                                                   trainable=False, name="fingerprint")
        self._checkpoint = tf.train.Checkpoint(**state)
        best_checkpoint = tf.train.Checkpoint(model=model, best_score=self.best_score, best_epoch=self.best_epoch)
        self.checkpoint_dir = join_path(job_dir, CHECKPOINTS_DIRNAME)
        self.best_dir = join_path(job_dir, BEST_DIRNAME)
        self._role = role
        self._my_dirs = [distribution.write_dir(self.checkpoint_dir, role), distribution.write_dir(self.best_dir, role)]
        if role.is_chief:
            tf.io.gfile.makedirs(job_dir)
        self._manager = tf.train.CheckpointManager(self._checkpoint, self._my_dirs[0], max_to_keep=keep_checkpoints)
        self._best_manager = tf.train.CheckpointManager(best_checkpoint, self._my_dirs[1], max_to_keep=1)

    def restore(self, total_steps: int) -> int:
        """Restores the newest intact checkpoint (if any) and the best epoch of ``best/``; returns the step to start at.

        A checkpoint whose files cannot be read (truncated, its index or data file missing) is passed over with a
        warning for the one before it: TensorFlow's own lookup skips one without an index silently, and the job then
        trained from step 0 over the folder's older checkpoints.

        Raises:
            TrainingError: the checkpoint does not fit this model/options, holds more steps than ``total_steps``, or
                the folder holds checkpoints of which none can be read.
        """
        saved = saved_checkpoints(self.checkpoint_dir)
        damaged = []
        for latest in saved:
            try:  # A failure to open it or read its fingerprint: its files are damaged (or gone).
                self._check_fingerprint(latest, tf.train.load_checkpoint(latest))
            except DAMAGE_ERRORS as e:
                damaged.append(_damage(latest, e))
                continue
            except tf.errors.OpError as e:
                raise _unreadable(latest, e) from e
            try:
                self._restorable.restore(latest).assert_existing_objects_matched().expect_partial()
            except (IndexError, tf.errors.DataLossError) as e:  # (A truncated data file: "Read less bytes ...".)
                damaged.append(_damage(latest, e))
                continue
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise TrainingError(
                    f"checkpoint {latest} does not fit this model/options ({type(e).__name__}: {e}); resume with "
                    "the options of the original run or use a new --job_dir"
                ) from e
            if damaged:
                log.warning("checkpoint(s) %s cannot be read (damaged); resuming from the newest intact one, %s",
                            "; ".join(damaged), latest)
            log.info("resumed from %s at step %d (epochs evaluated %d, best score %.4f)", latest,
                     int(self.step.numpy()), int(self.epochs_done.numpy()), float(self.best_score.numpy()))
            break
        else:
            if damaged:  # Starting at step 0 would train over (and, as it saves, delete) what the folder holds.
                raise TrainingError(f"no checkpoint in {self.checkpoint_dir} can be read: {'; '.join(damaged)}; "
                                    "restore the folder from a copy, or use a new --job_dir to start over")
        stored = self._readable_best()
        if stored is None and int(self.best_epoch.numpy()) > 0:
            # best/ lost or damaged: its epoch cannot be exported, and its score would keep every later epoch out of
            # best/ (the job then ended in "no best checkpoint", or a traceback, only after all its training).
            log.warning("the best epoch %d's checkpoint in %s is missing or cannot be read: the best epoch is "
                        "selected again among the epochs evaluated from now on (none remain when the job has ended: "
                        "raise --epochs)", int(self.best_epoch.numpy()), self.best_dir)
            self.best_epoch.assign(0)
            self.best_score.assign(-math.inf)
            # Early stopping counts from here: from epoch 0 it would end the job at once (with no epoch to export).
            self._no_best_since = int(self.epochs_done.numpy())
        if stored is not None and (stored[0], stored[1]) != (int(self.best_epoch.numpy()),
                                                             float(self.best_score.numpy())):
            # A run killed between saving best/ and the next checkpoint: best/ holds a newer best epoch.
            log.info("best checkpoint %s holds epoch %d (score %.4f); the resumed run goes on from it", stored[2],
                     stored[0], stored[1])
            self.best_epoch.assign(stored[0])
            self.best_score.assign(stored[1])
        start_step = int(self.step.numpy())
        if start_step > total_steps:
            raise TrainingError(
                f"{self.checkpoint_dir} holds step {start_step} > epochs x steps_per_epoch = {total_steps}: "
                "use a new --job_dir or the options of the original run"
            )
        return start_step

    def _readable_best(self) -> tuple[int, float, str] | None:
        """:func:`read_best_checkpoint` when every tensor of it reads (its model is what the job exports), else None
        with a warning naming the damage."""
        try:
            stored = read_best_checkpoint(self.best_dir)
            if stored is not None:
                reader = tf.train.load_checkpoint(stored[2])
                for name in reader.get_variable_to_shape_map():
                    reader.get_tensor(name)
        except DAMAGE_ERRORS as e:
            log.warning("best checkpoint cannot be read: %s", _damage(self.best_dir, e))
            return None
        except tf.errors.OpError as e:
            raise _unreadable(self.best_dir, e) from e
        return stored

    def _check_fingerprint(self, latest: str, reader) -> None:
        """Raises TrainingError when ``latest`` (read by ``reader``) was trained on other data or options (see the
        module docstring)."""
        if self._fingerprint is None:
            return
        if not reader.has_tensor(FINGERPRINT_KEY):
            log.warning("checkpoint %s holds no data fingerprint (written by an older version): the data and "
                        "options it was trained on cannot be checked", latest)
            return
        stored = json.loads(reader.get_tensor(FINGERPRINT_KEY).decode("utf-8"))
        unrecorded = unrecorded_selection(stored, self._fingerprint)
        if unrecorded:
            log.warning("%s: %s", latest, unrecorded)
        changed = differences(stored, self._fingerprint)
        if not changed:
            return
        message = (f"checkpoint {latest} does not fit this model/options: it was trained on other data or "
                   f"options ({'; '.join(changed)})")
        fixed = unrestorable(stored, self._fingerprint)
        if fixed:
            raise TrainingError(message + f". The optimizer's checkpointed state cannot take another "
                                f"{', '.join('--' + name for name in fixed)}, also with --allow_data_change: resume "
                                "with the original value, or use a new --job_dir")
        if not self._allow_data_change:
            shapes = self._misfit(latest)  # --allow_data_change was offered also where it then failed on the shapes
            raise TrainingError(message + (
                ". Resume with the original data and options, use a new --job_dir, or pass --allow_data_change to go "
                "on from these weights anyway" if shapes is None else
                f". Resume with the original options or use a new --job_dir: its weights do not fit this model "
                f"({shapes}), so --allow_data_change cannot go on from them either"))
        log.warning("%s; going on from its weights (--allow_data_change)", message)

    def _misfit(self, latest: str) -> str | None:
        """Why ``latest``'s weights cannot be restored into this model (a probe: the job stops after), or None."""
        try:
            self._restorable.restore(latest).assert_existing_objects_matched().expect_partial()
        except (AssertionError, ValueError) as e:
            return str(e).strip().splitlines()[0][:300]
        except (IndexError, tf.errors.OpError):
            return None  # (Unreadable: not a question of shapes.)
        return None

    @property
    def epochs_without_improvement(self) -> int:
        """Evaluated epochs since the best one (the early-stopping count, :mod:`trainer.training.schedules`)."""
        return schedules.epochs_without_improvement(int(self.epochs_done.numpy()), self._counted_from)

    @property
    def _counted_from(self) -> int:
        return max(int(self.best_epoch.numpy()), self._no_best_since)

    def stops_early(self, patience: int) -> bool:
        """Whether ``--early_stopping patience`` ends the job now (logged when it does)."""
        if not schedules.should_stop_early(patience, int(self.epochs_done.numpy()), self._counted_from):
            return False
        log.info("early stopping: %d epochs without a better score than epoch %d (%.4f)",
                 self.epochs_without_improvement, int(self.best_epoch.numpy()), float(self.best_score.numpy()))
        return True

    def save(self, step: int) -> None:
        """Saves a regular checkpoint numbered ``step``."""
        self._manager.save(checkpoint_number=step)

    def record_epoch(self, epoch: int, score: float) -> bool:
        """Marks ``epoch`` evaluated; saves ``best/`` when ``score`` beats the best so far. Returns whether it did."""
        better = score > float(self.best_score.numpy())
        if better:
            self.best_score.assign(score)
            self.best_epoch.assign(epoch)
            self._best_manager.save(checkpoint_number=epoch)
        self.epochs_done.assign(epoch)
        return better

    def close(self) -> None:
        """Removes a non-chief worker's temporary checkpoint directories."""
        for path in self._my_dirs:
            distribution.remove_temp_dir(path, self._role)
