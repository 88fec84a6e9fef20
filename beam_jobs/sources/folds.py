"""Subject-independent k-fold splits for datasets without official ones.

``--folds K --fold I`` puts a subject in ``validation`` when a stable hash of its id, modulo
``K``, equals ``I``, and in ``train`` otherwise. Every frame of a subject therefore lands in one
split (no identity leaks from train into validation), and the assignment is the same on every
machine, Python version and run: it is SHA-256 of the id's UTF-8 bytes (Unicode NFC, surrounding
whitespace removed), not Python's salted ``hash()``. Running ``--fold 0`` .. ``--fold K-1`` gives
K conversions whose validation splits partition the subjects.

The split a fold assigns is a property of the subject alone: adding or removing other subjects
never moves one, so a dataset that grows keeps its earlier assignments.

Example::

    check_folds(5, 2)
    split = fold_split("actor_07", folds=5, fold=2)   # "train" or "validation"
"""

from __future__ import annotations

import hashlib
import unicodedata

from tfrecords_schema import SPLIT_TRAIN, SPLIT_VALIDATION


def subject_key(subject: str) -> str:
    """The form of a subject id that is hashed and compared: NFC, surrounding whitespace removed."""
    return unicodedata.normalize("NFC", str(subject)).strip()


def _digest(subject: str) -> int:
    return int.from_bytes(hashlib.sha256(subject_key(subject).encode("utf-8")).digest()[:8], "big")


def subject_unit(subject: str) -> float:
    """The subject's stable hash as a number in [0, 1): the same on every machine, Python version and run."""
    return _digest(subject) / 2.0**64


def fold_of(subject: str, folds: int) -> int:
    """The fold (``0 .. folds-1``) a subject belongs to.

    Args:
        subject: Subject id (e.g. an actor or participant code).
        folds: Number of folds, >= 2.
    """
    return _digest(subject) % folds


def fold_split(subject: str, folds: int, fold: int) -> str:
    """``"validation"`` when the subject is in fold ``fold``, else ``"train"``."""
    return SPLIT_VALIDATION if fold_of(subject, folds) == fold else SPLIT_TRAIN


def check_folds(folds: int | None, fold: int | None) -> None:
    """Checks the ``--folds``/``--fold`` pair.

    Raises:
        ValueError: only one of them given, ``folds < 2``, or ``fold`` not in ``[0, folds)``.
    """
    if folds is None and fold is None:
        return
    if folds is None or fold is None:
        raise ValueError("--folds K and --fold I go together (the subjects of fold I form the validation split)")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2, got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"--fold must be an integer in [0, {folds}), got {fold!r}")
