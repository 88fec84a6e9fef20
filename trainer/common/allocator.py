"""The C allocator's settings for the training input: large buffers recycled, not mapped and zeroed afresh.

The input pipeline allocates and frees a buffer per record and per decoded window: a few hundred KiB to a few MiB
with raw crops (``convert --codec raw``: 37,632 bytes per 112² crop). glibc's ``malloc`` serves every block over
128 KiB with a fresh ``mmap`` (the kernel zeroes each page on first touch, and ``munmap`` returns it when freed),
which on the 2-core test machine cost 10-15% of the CPU of a raw input stream (``bench/input_rate.py``, figures in
docs/benchmarks.md). :func:`recycle_large_buffers` raises the ``mmap`` threshold to glibc's maximum (32 MiB) and
keeps up to :data:`TRIM_THRESHOLD` of freed memory for reuse (``mallopt``), the tuning TensorFlow's performance
guide reaches with tcmalloc. Elsewhere (another C library, or ``MALLOC_*`` already set by the user) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 512 << 20  # freed memory kept for reuse before it is given back to the system
TOP_PAD = 64 << 20


def recycle_large_buffers() -> bool:
    """Applies the settings above; returns whether it did (glibc, and no ``MALLOC_*`` tuning in the environment)."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt tuning of this kind)
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
