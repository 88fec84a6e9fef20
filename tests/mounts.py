"""Real file systems for the tests that need one: a tmpfs of a given size and options (``ro``), mounted for a block.

Mounting needs the right to (root in a container); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import gc
import pathlib
import subprocess

import pytest


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str, *options: str):
    """A tmpfs mounted at ``path`` (created); unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        gc.collect()  # A failed writer's file object may still hold a file there until it is collected.
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)  # Detached now, freed once the last file closes.
