"""File systems for `--data` / `--job_dir` URLs: local paths, `gs://`, `s3://` and other tensorflow-io schemes.

TensorFlow reads local paths and ``gs://`` with its own file systems. ``s3://`` (and ``hdfs://``,
``az://``, ``http(s)://`` ...) are provided by `tensorflow-io`, which registers them when imported:
call :func:`register_filesystems` with every URL before touching it with ``tf.io.gfile`` or tf.data.

tensorflow-io's S3 file system aborts the process at interpreter exit (``SIGABRT``, exit code 134) even
after a successful run. Entry points that may have used S3 end with :func:`exit_hard_if_needed`, which
runs Python's exit handlers, flushes the output streams and logging handlers and leaves with ``os._exit(code)`` when a
tensorflow-io scheme was registered in this process, skipping the crashing destructors.

Example (the environment of an S3-compatible server)::

    S3_ENDPOINT=http://127.0.0.1:9000 S3_USE_HTTPS=0 S3_VERIFY_SSL=0 AWS_REGION=us-east-1 \\
    python -m trainer.train --data s3://bucket/converted --job_dir /tmp/job --task expr
"""

from __future__ import annotations

import atexit
import errno
import os
import posixpath
import sys

# Schemes TensorFlow handles itself (no extra import).
NATIVE_SCHEMES = ("file", "gs", "ram")
# Schemes added by `import tensorflow_io`.
TFIO_SCHEMES = ("s3", "hdfs", "viewfs", "har", "az", "http", "https")

_tfio_used = False


def scheme_of(url: str) -> str:
    """The URL scheme (``"s3"``, ``"gs"``...) or ``""`` for a local path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or below it: local paths by their real paths (links followed), URLs by scheme and
    normalised path (``gs://b//x/`` is ``gs://b/x``). A URL is never within a local folder, nor the other way."""
    if scheme_of(path) != scheme_of(folder):
        return False
    if "://" not in path:
        path, folder = os.path.realpath(path), os.path.realpath(folder)
        return os.path.commonpath([path, folder]) == folder
    path, folder = (posixpath.normpath(p.split("://", 1)[1]) for p in (path, folder))
    return path == folder or path.startswith(folder + "/")


def register_filesystems(*urls: str | None) -> None:
    """Makes the file systems of ``urls`` available to TensorFlow.

    Raises:
        ValueError: a scheme neither TensorFlow nor tensorflow-io provides.
        ImportError: tensorflow-io is needed but not installed.
    """
    for url in urls:
        if not url:
            continue
        scheme = scheme_of(url)
        if scheme in ("",) + NATIVE_SCHEMES:
            continue
        if scheme not in TFIO_SCHEMES:
            raise ValueError(
                f"unsupported URL scheme {scheme!r} in {url!r}; valid: local paths, "
                f"{', '.join(s + '://' for s in NATIVE_SCHEMES + TFIO_SCHEMES)}"
            )
        try:
            register_tensorflow_io()
        except ImportError as e:
            raise ImportError(f"{url!r} needs tensorflow-io (pip install tensorflow-io): {e}") from e


def register_tensorflow_io() -> None:
    """Registers every tensorflow-io file system (``s3://`` ...) in this process, whatever URLs come later (a tf.data
    service worker reads the paths of the datasets sent to it).

    Raises:
        ImportError: tensorflow-io is not installed.
    """
    global _tfio_used
    import tensorflow_io  # noqa: F401  (registers the file systems as a side effect)

    _tfio_used = True


def missing_hint(url: str) -> str:
    """What to add to "``url`` not found" where it may not be the object's absence: tensorflow-io's ``s3://`` answers
    a bucket that does not exist, credentials it refuses and an endpoint it cannot reach (after ~1 min of retries)
    with the same "not found" (tensorflow-io 0.37.1). A local path that is a symbolic link leading nowhere (broken, or
    a loop) is said to be one: the user would look for a missing file. ``""`` otherwise."""
    if "://" not in url:
        return _broken_link(url)
    if scheme_of(url) != "s3":
        return ""
    hint = ("; tensorflow-io also says not found for a bucket that does not exist, refused credentials or an "
            "unreachable endpoint: check the bucket, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_REGION and, "
            "for an S3-compatible server, S3_ENDPOINT and S3_USE_HTTPS")
    if not _aws_credentials_set():
        hint += " (no AWS credentials are set in the environment or in ~/.aws; an instance role would still serve)"
    return hint


def _broken_link(path: str) -> str:
    """``"; PATH is a symbolic link ..."`` for a local link whose target cannot be reached, else ``""``."""
    if not os.path.islink(path):
        return ""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"; {path} is a symbolic link that loops (a chain of links that never reaches a file)"
        target = os.readlink(path)
        if e.errno == errno.ENOENT:
            return f"; {path} is a symbolic link to {target}, which does not exist"
        return f"; {path} is a symbolic link to {target}, which cannot be reached ({e.strerror})"
    return ""


def _aws_credentials_set() -> bool:
    """Whether the environment or the AWS files name credentials (the AWS SDK's chain before instance roles)."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE") \
            or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return True
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials"),
             os.environ.get("AWS_CONFIG_FILE") or os.path.expanduser("~/.aws/config"))
    return any(os.path.isfile(f) for f in files)


def tfio_used() -> bool:
    """Whether a tensorflow-io file system was registered in this process."""
    return _tfio_used


def exit_hard_if_needed(code: int) -> int:
    """Returns ``code``, or runs Python's exit handlers, flushes and ``os._exit(code)`` when a tensorflow-io scheme
    was used.

    Call it last in an entry point: ``sys.exit(exit_hard_if_needed(run(argv)))``.
    """
    if not _tfio_used:
        return code
    # Python's exit handlers still run (among them TensorFlow's removal of its autograph files from the temp folder,
    # ~50 a training job, and logging.shutdown, registered by logging itself): only the native destructors that abort
    # are skipped.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
