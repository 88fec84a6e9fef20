"""The videos of a prediction run: files and folders listed (local, ``gs://``, ``s3://``), the tracks predicted on them
(a video, or one side of it, with its provided crops when there are some) and their output names, and a local copy
of a remote video while it is read."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence

from tfrecords_schema import filesystems
from tfrecords_schema.cli import first_of
from trainer.prediction.errors import PredictError, PredictUsageError

COPY_CHUNK_BYTES = 8 << 20  # Remote videos are copied locally in pieces of this size.
LOCAL_COPY_PREFIX = "affectstream-predict-"  # The name of a remote video's local copy starts with it.


def _ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _same_file_key(path: str) -> str:
    """What makes two spellings of a video the same file: the real path locally, the URL without repeated slashes."""
    if "://" in path:
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(path)


def list_videos(paths: Sequence[str], duplicates: list[str] | None = None, output: str | None = None,
                notes: list[str] | None = None) -> list[str]:
    """The videos to predict: files as given, folders searched recursively for every container in any case.

    A video named twice (the same path, another spelling of it, a link to it, or a file also found in a folder) is
    predicted once, under its first name; each repeat adds a note to ``duplicates`` when given. A folder search
    follows links to folders but enters each folder once (a link back up a tree is a loop), and leaves out
    ``output``, the run's own folder (a second run would take the first's renders for videos); each adds a note to
    ``notes`` when given.

    Raises:
        PredictError: a path that does not exist, or no video at all.
    """
    from beam_jobs.media.video import VIDEO_EXTENSIONS
    from tfrecords_schema import storage

    duplicates = duplicates if duplicates is not None else []
    notes = notes if notes is not None else []
    found: list[str] = []
    for path in paths:
        filesystems.register_filesystems(path)
        files = storage.gfile(path)
        if files.isdir(path):
            if storage.is_url(path):  # (Objects have no links.)
                inside = [v for v in _remote_files(path, output, notes) if _ext(v) in VIDEO_EXTENSIONS]
            else:
                inside = [v for v in _local_files(path, output, notes) if _ext(v) in VIDEO_EXTENSIONS]
            metadata = [v for v in inside if _is_apple_double(v)]
            if metadata:  # (Each failed as a video that does not open, and the run exited 1.)
                notes.append(f"{len(metadata)} macOS metadata file(s) under {path} left out (AppleDouble '._' "
                             f"companions of a copy from a Mac, not videos): {first_of(metadata, 3)}")
                inside = [v for v in inside if v not in metadata]
            if not inside:
                raise PredictError(f"no video ({', '.join(VIDEO_EXTENSIONS)}, any case) under folder {path!r}")
            found += inside
        elif files.exists(path):
            found.append(path)
        else:
            raise PredictError(f"--videos {path!r} does not exist{filesystems.missing_hint(path)}")
    first: dict[str, str] = {}
    for video in found:
        key = _same_file_key(video)
        if key not in first:
            first[key] = video
        else:
            duplicates.append(f"{video} is the same video as {first[key]}: predicted once")
    return list(first.values())


APPLE_DOUBLE_MAGIC = b"\x00\x05\x16\x07"  # The first bytes of a macOS "._name" metadata file.


def _is_apple_double(path: str) -> bool:
    """Whether ``path`` is a macOS AppleDouble file (``._name`` beside ``name`` on a copy from a Mac): by its name and
    its first bytes, so that a video named ``._x.mp4`` is still a video."""
    from tfrecords_schema import storage
    from trainer.common.errors import tensorflow_errors

    if not posixpath.basename(path.replace("\\", "/")).startswith("._"):
        return False
    try:
        with storage.gfile(path).GFile(path, "rb") as f:
            return f.read(len(APPLE_DOUBLE_MAGIC)) == APPLE_DOUBLE_MAGIC
    except (OSError, *tensorflow_errors()):  # (Unreadable: left to fail as a video, counted.)
        return False


def _remote_files(root: str, output: str | None, notes: list[str]) -> list[str]:
    """The objects under URL ``root``, sorted, the ``output`` folder's left out (with a note) where it lies below
    ``root``, as :func:`_local_files` does. A root that is the output folder or inside it is searched whole: the
    run's CSVs may sit next to the videos (a ``--render`` there is refused, :func:`check_output_place`)."""
    from tfrecords_schema import storage

    skip = output if output and storage.is_url(output) and not filesystems.is_within(root, output) else None
    found = []
    for folder, _, names in storage.gfile(root).walk(root):
        if skip and filesystems.is_within(folder, skip):
            if _same_file_key(folder) == _same_file_key(skip):
                notes.append(f"{folder} is the --output folder: not searched for videos")
            continue
        found += (posixpath.join(folder, name) for name in _without_renders(folder, names, notes))
    return sorted(found)


def _local_files(root: str, output: str | None, notes: list[str]) -> list[str]:
    """The files under local folder ``root``, sorted: links to folders followed, each folder entered once, the
    ``output`` folder left out (both with a note).

    Raises:
        PredictError: a folder that cannot be listed (no permission, an I/O error): its videos would be missing.
    """
    from beam_jobs.sources.folder_scan import file_identity  # (A folder gone since it was listed counts alone.)

    skip = file_identity(output) if output and "://" not in output else None
    seen = {file_identity(root)}
    files, unlisted = [], []
    for folder, subfolders, names in os.walk(root, followlinks=True, onerror=unlisted.append):
        kept = []
        for name in sorted(subfolders):
            sub = os.path.join(folder, name)
            key = file_identity(sub)
            if key == skip:
                notes.append(f"{sub} is the --output folder: not searched for videos")
            elif key in seen:
                notes.append(f"{sub} leads to a folder searched already (a link): not searched again")
            else:
                seen.add(key)
                kept.append(name)
        subfolders[:] = kept  # os.walk enters only these.
        files += (os.path.join(folder, name) for name in _without_renders(folder, names, notes))
    if unlisted:  # (os.walk leaves such a folder out without a word.)
        shown = first_of((f"{e.filename}: {e.strerror or e}" for e in unlisted), 5, "; ")
        raise PredictError(f"cannot list {len(unlisted)} folder(s) under {root}: {shown}; its videos would be missing "
                           "from the run: nothing was read or written")
    return sorted(files)


def _without_renders(folder: str, names: list[str], notes: list[str]) -> list[str]:
    """``names`` (files of ``folder``) less the videos ``predict --render`` wrote there, with a note (as the
    conversion's folder scan does): they would be taken for second videos of the same names."""
    from beam_jobs.media.video import VIDEO_EXTENSIONS
    from tfrecords_schema.prediction_files import LEDGER_FILENAME, rendered_videos

    if LEDGER_FILENAME not in names:
        return names
    renders, note = rendered_videos(folder, names, VIDEO_EXTENSIONS)
    if note:
        notes.append(note)
    return [name for name in names if name not in renders]


def output_stems(videos: Sequence[str], side: str | None) -> list[str]:
    """Output name of each video: its stem, ``_left``/``_right`` appended for a side (the ABAW names).

    Raises:
        PredictError: videos whose stems are the same, or differ only in letter case or in Unicode form (a composed
            or a decomposed accent): their files would overwrite each other on a file system that ignores case (macOS's
            and Windows') or form (macOS's); every clash is named.
    """
    stems = [_stem(v) + (f"_{side}" if side else "") for v in videos]
    seen: dict[str, str] = {}
    clashes = []
    for stem, video in zip(stems, videos):
        key = unicodedata.normalize("NFD", unicodedata.normalize("NFD", stem).casefold())  # (Unicode's caseless match)
        if key in seen:
            clashes.append(f"{stem!r}: {seen[key]} and {video}")
        else:
            seen[key] = video
    if clashes:
        raise PredictError(f"{len(clashes)} video(s) share an output name with another (letter case and Unicode "
                           f"form aside): {first_of(clashes, 10, '; ')}; predict them into different --output folders")
    return stems


@dataclasses.dataclass(frozen=True)
class Track:
    """One output of a prediction run: a video (or one side of it) and, with provided crops, its crops folder.

    Attributes:
        video: The video's path or URL.
        stem: Output name: the video's stem, ``_left``/``_right`` appended for a side (the ABAW names), or the crops
            folder's name.
        side: ``"left"``/``"right"`` of a two-person video for the face stage, else None.
        crops_dir: The track's provided crops (``--cropped_aligned``), else None.
    """

    video: str
    stem: str
    side: str | None = None
    crops_dir: str | None = None


def _stem(video: str) -> str:
    return os.path.splitext(posixpath.basename(video.replace("\\", "/")))[0]


def plan_tracks(videos: Sequence[str], side: str | None, cropped_aligned: str | None,
                notes: list[str] | None = None) -> list[Track]:
    """The tracks of a run: each video (its ``side``), or with ``cropped_aligned`` each crops folder with its video.

    Crops folders are matched by name, as the conversion matches them: ``DIR/<stem>`` for a video ``<stem>.*``, and
    ``DIR/<stem>_left``, ``DIR/<stem>_right`` for the two people of one video (each its own track). Folders that
    match none of ``videos`` are not tracks (ABAW's ``cropped_aligned`` holds every video's crops, and a run predicts
    some): one note in ``notes`` counts them.

    Raises:
        PredictError: two videos with the same output name.
        PredictUsageError: a video without a crops folder, or ``side`` with provided crops (their folders name the
            side).
    """
    if not cropped_aligned:
        return [Track(video, stem, side) for video, stem in zip(videos, output_stems(videos, side))]
    from tfrecords_schema import join_path, storage

    if side:
        raise PredictUsageError("--side with --cropped_aligned: the crops folders' names (<video>_left, <video>_right) "
                                "say which person each track is; leave --side out")
    files = storage.gfile(cropped_aligned)
    if not files.isdir(cropped_aligned):
        raise PredictUsageError(f"--cropped_aligned {cropped_aligned!r} is not a folder")
    by_stem = dict(zip(output_stems(videos, None), videos))
    folders = sorted(name.rstrip("/") for name in files.listdir(cropped_aligned)
                     if files.isdir(join_path(cropped_aligned, name.rstrip("/"))))
    tracks, matched, unmatched = [], set(), []
    for folder in folders:
        base, _, suffix = folder.rpartition("_")
        if folder in by_stem:
            video, track_side = by_stem[folder], None
        elif suffix in ("left", "right") and base in by_stem:
            video, track_side = by_stem[base], suffix
        else:
            unmatched.append(folder)
            continue
        matched.add(video)
        tracks.append(Track(video, folder, track_side, join_path(cropped_aligned, folder)))
    for video in videos:
        if video not in matched:
            stem = _stem(video)
            raise PredictUsageError(f"video {video} has no crops folder under --cropped_aligned {cropped_aligned} "
                                    f"(expected {join_path(cropped_aligned, stem)}, or {stem}_left and {stem}_right)")
    if unmatched and notes is not None:
        notes.append(f"{len(unmatched)} crops folder(s) under --cropped_aligned {cropped_aligned} match no video among "
                     f"--videos (a video named <folder>.*, or <stem>.* for <stem>_left/_right): not predicted "
                     f"({first_of(unmatched, 3)})")
    return tracks


@contextlib.contextmanager
def local_video(path: str) -> Iterator[str]:
    """A local path for ``path``: remote videos are copied to a temporary file in chunks, then removed.

    The copy goes through TensorFlow's file systems (``gs://`` natively, ``s3://`` through tensorflow-io
    with the trainer's ``S3_ENDPOINT``/``AWS_*`` settings): the same storage stack as ``--model``,
    ``--output`` and the folder listing, so a video that lists also reads. (``beam_jobs.media.video`` copies
    remote media with Beam's file systems, whose S3 needs pipeline options a prediction run does not have.)
    """
    from tfrecords_schema import storage

    if not storage.is_url(path):
        yield path
        return
    import tensorflow as tf
    fd, local = tempfile.mkstemp(suffix=_ext(path), prefix=LOCAL_COPY_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out, tf.io.gfile.GFile(path, "rb") as src:
            while chunk := src.read(COPY_CHUNK_BYTES):
                out.write(chunk)
        yield local
    finally:
        os.remove(local)


def check_output_place(output: str, tracks: Sequence[Track], render: bool, searched: Sequence[str] = ()) -> None:
    """Refuses, before any video is read, an ``--output`` that cannot take the run's files or would replace an input.

    A render is ``OUT/<stem>.mp4``: with ``--output`` the videos' own folder it would be written over the video it
    renders (files of the same names are replaced, and this one is not the tool's to replace).

    Raises:
        PredictUsageError: ``--output`` is a file or a broken link, a local one cannot be written (a read-only file
            system, no permission: before, every video was predicted and then failed to be written), or a render would
            land on an input video.
    """
    from tfrecords_schema import join_path, storage
    from tfrecords_schema.disk_space import check_output_place as check_local_place

    files = storage.gfile(output)
    if files.exists(output) and not files.isdir(output):
        raise PredictUsageError(f"--output {output!r} is a file; give a folder")
    if not storage.is_url(output) and os.path.islink(output) and not os.path.exists(output):
        # (Before: "File exists" from the first folder made there, once the model was loaded.)
        raise PredictUsageError(f"--output {output!r} is a symbolic link to a folder that is not there "
                                f"({os.readlink(output)!r}, or a loop of links); make that folder, or give another")
    # A URL gets a probe object (a bucket that does not exist failed every video, after decoding it, as the video's
    # own error).
    problem = storage.url_write_problem(output) if storage.is_url(output) else check_local_place(output).problem
    if problem:
        raise PredictUsageError(f"--output {output!r} cannot be written: {problem}; nothing was read or written")
    if not render:
        return
    for folder in searched:  # (A folder below a searched one is left out of the search: list_videos.)
        if storage.gfile(folder).isdir(folder) and _same_file_key(folder) == _same_file_key(output):
            raise PredictUsageError(f"--render would write its videos into {folder}, which --videos searches: the next "
                                    "run would take them for videos; give an --output folder apart from the videos")
    inputs = {_same_file_key(track.video): track.video for track in tracks}
    for track in tracks:
        target = join_path(output, f"{track.stem}.mp4")
        if _same_file_key(target) in inputs:
            raise PredictUsageError(f"--render would write {target}, which is the input video "
                                    f"{inputs[_same_file_key(target)]!r}; give an --output folder apart from the videos")
