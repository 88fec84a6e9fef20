"""A resume over a damaged ``JOB/checkpoints`` folder: the newest intact checkpoint, never a silent start at step 0,
never a traceback."""

import dataclasses
import os

import keras
import pytest

from trainer.common.errors import TrainingError
from trainer.model.build import build_model
from trainer.model.spec import ModelSpec
from trainer.training import distribution
from trainer.training.state import TrainState

SPEC = ModelSpec(heads=("expression",), num_expression_classes=2, crop_size=16, cnn_width=0.125, feature_dim=4,
                 rnn_units=(4,))


def _state(job_dir) -> TrainState:
    model = build_model(SPEC)
    optimizer = keras.optimizers.Adam(0.001)
    optimizer.build(model.trainable_variables)
    return TrainState(model, optimizer, str(job_dir), distribution.Role(), 3, fingerprint={"x": 1})


@pytest.fixture
def job(tmp_path):
    """A job folder whose checkpoints are at steps 2 and 4."""
    state = _state(tmp_path)
    for step in (2, 4):
        state.step.assign(step)
        state.save(step)
    return tmp_path


def _truncate(path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


@pytest.mark.parametrize("damage", ["truncated data file", "index file missing", "checkpoint file missing"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before_with_a_warning(job, damage, caplog):
    folder = job / "checkpoints"
    if damage == "truncated data file":
        _truncate(folder / "ckpt-4.data-00000-of-00001")
    elif damage == "index file missing":
        os.remove(folder / "ckpt-4.index")
    else:  # the `checkpoint` file listing them: every checkpoint is still there
        os.remove(folder / "checkpoint")
    expected = 4 if damage == "checkpoint file missing" else 2
    with caplog.at_level("WARNING", logger="trainer.train"):
        assert _state(job).restore(100) == expected
    if expected == 2:
        assert "ckpt-4" in caplog.text and "resuming from the newest intact one" in caplog.text


def test_a_folder_whose_every_checkpoint_is_damaged_is_refused_naming_them(job):
    folder = job / "checkpoints"
    _truncate(folder / "ckpt-4.data-00000-of-00001")
    os.remove(folder / "ckpt-2.index")
    with pytest.raises(TrainingError, match="no checkpoint in .* can be read") as caught:
        _state(job).restore(100)
    assert "ckpt-4" in str(caught.value) and "ckpt-2" in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "removed"])
def test_a_lost_best_checkpoint_is_said_at_start_and_the_next_evaluated_epoch_takes_its_place(job, damage, caplog):
    state = _state(job)
    state.restore(100)
    state.record_epoch(1, 0.9)  # best/ holds epoch 1 ...
    state.save(4)  # ... and so does the checkpoint's best score
    if damage == "truncated":
        (data,) = (job / "best").glob("*.data-*")
        _truncate(data)
    else:
        for path in (job / "best").iterdir():
            path.unlink()
    again = _state(job)
    with caplog.at_level("WARNING", logger="trainer.train"):
        assert again.restore(100) == 4
    assert "best epoch 1's checkpoint" in caplog.text and "missing or cannot be read" in caplog.text
    assert again.record_epoch(2, 0.1)  # a worse score than the lost one, yet the only exportable best now
    assert (job / "best" / "ckpt-2.index").exists()


def test_a_checkpoint_of_another_model_shape_does_not_offer_allow_data_change(job):
    def other(units, fingerprint):
        model = build_model(dataclasses.replace(SPEC, rnn_units=(units,)))
        optimizer = keras.optimizers.Adam(0.001)
        optimizer.build(model.trainable_variables)
        return TrainState(model, optimizer, str(job), distribution.Role(), 3, fingerprint=fingerprint)

    with pytest.raises(TrainingError) as caught:  # other shapes: --allow_data_change would fail on them too
        other(8, {"x": 2}).restore(100)
    assert "so --allow_data_change cannot go on from them either" in str(caught.value)
    assert "pass --allow_data_change" not in str(caught.value)
    with pytest.raises(TrainingError, match="pass --allow_data_change to go on from these weights anyway"):
        other(4, {"x": 2}).restore(100)  # the same shapes: it can


def test_a_checkpoint_the_storage_cannot_serve_now_stops_the_job_and_changes_nothing(job, monkeypatch):
    # A store that did not answer (UnavailableError, PermissionDenied) counted as damage: the job resumed from an
    # older checkpoint, or dropped best/ so that the next epoch, however bad, replaced the real best model.
    import tensorflow as tf

    state = _state(job)
    state.restore(100)
    state.record_epoch(1, 0.9)
    state.save(4)
    real = tf.train.load_checkpoint

    def unavailable(path):
        raise tf.errors.UnavailableError(None, None, "503 backend error")

    monkeypatch.setattr(tf.train, "load_checkpoint", unavailable)
    with pytest.raises(TrainingError, match=r"ckpt-4 could not be read \(UnavailableError: 503 backend error\)"):
        _state(job).restore(100)
    monkeypatch.setattr(tf.train, "load_checkpoint",
                        lambda path: unavailable(path) if "best" in str(path) else real(path))
    with pytest.raises(TrainingError, match="could not be read .* run the same command again"):
        _state(job).restore(100)
    assert sorted(p.name for p in (job / "best").iterdir() if p.name.endswith(".index")) == ["ckpt-1.index"]


def test_the_checkpoint_folder_is_listed_not_taken_for_a_pattern(tmp_path):
    # A job folder named "exp[1]" globbed the sibling job "exp1"'s checkpoints and resumed from them.
    sibling = _state(tmp_path / "exp1")
    sibling.step.assign(500)
    sibling.save(500)
    assert _state(tmp_path / "exp[1]").restore(1000) == 0


def test_a_lost_best_checkpoint_with_early_stopping_trains_on_instead_of_stopping_at_once(job):
    state = _state(job)
    state.restore(100)
    for epoch in (1, 2, 3):
        state.record_epoch(epoch, 0.9 if epoch == 1 else 0.5)
    state.save(4)
    for path in (job / "best").iterdir():
        path.unlink()
    again = _state(job)
    again.restore(100)
    assert not again.stops_early(2) and again.epochs_without_improvement == 0  # counted from the loss of best/
