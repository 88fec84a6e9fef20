"""Lines of a text file whatever its line ends and encoding, so that no labelled line can hide.

A file exported with CR-only line ends (old Mac tools) read as LF text is one long header line, and its
frames vanish from the accounting; a UTF-16 file read as UTF-8 is a garbled header. Here:

* line ends: LF, CRLF and CR alone each end a line (not the other Unicode separators, which
  ``str.splitlines`` would also split on);
* encoding: from the byte-order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE); without one, UTF-8 with
  undecodable bytes replaced by U+FFFD, so a stray byte makes one malformed value, never a lost file.

The file is read in chunks: memory is bounded by the longest line. No TensorFlow or Beam import:
callers open the file with their own file system (``tf.io.gfile``, Beam ``FileSystems``).

Example::

    with tf.io.gfile.GFile(path, "rb") as f:
        for line in iter_lines(f):
            ...
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from typing import BinaryIO

# Longest BOM first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_LINE_END = re.compile(r"\r\n|\r|\n")
_CHUNK_BYTES = 1 << 20


def detect_encoding(head: bytes) -> tuple[str, int]:
    """The encoding a file's first bytes announce and the length of its byte-order mark.

    Args:
        head: The first (up to 4) bytes of the file.

    Returns:
        ``(codec name, BOM bytes)``; ``("utf-8", 0)`` when there is no BOM.
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    return "utf-8", 0


def iter_lines(stream: BinaryIO, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[str]:
    """Decoded lines of a binary stream, without their line ends.

    A final line end does not start an extra empty line (as in ``for line in file``).

    Args:
        stream: A file opened in binary mode (anything with ``read(n)``).
        chunk_bytes: Bytes read at a time.
    """
    head = stream.read(4)
    encoding, skip = detect_encoding(head)
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    pending = decoder.decode(head[skip:])
    first = True
    while True:
        chunk = stream.read(chunk_bytes)
        final = not chunk
        text = pending + decoder.decode(chunk, final=final)
        # A CR at the end of a chunk may be the first half of a CRLF: keep it for the next round.
        held_cr = not final and text.endswith("\r")
        parts = _LINE_END.split(text[:-1] if held_cr else text)
        pending = parts.pop() + ("\r" if held_cr else "")
        for line in parts:
            if first:
                line, first = line.lstrip("\ufeff"), False  # A second BOM some editors add.
            yield line
        if final:
            if pending:
                yield pending.lstrip("\ufeff") if first else pending
            return
