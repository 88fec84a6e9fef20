"""Which Beam runner runs the tests' pipelines, and what a run's runner said.

Beam 2.77's ``DirectRunner`` hands any pipeline it judges Prism can run to Prism, whose Go binary it downloads from
GitHub on first use. A ``TestPipeline()`` that names no runner therefore tries the network: where there is none the
try fails, leaves a ``beam-temp*`` folder in the system's temp folder (one per pipeline, never removed), and falls back
to the ``FnApiRunner``; where there is network the test runs on another runner than the conversion. The conversion
itself never goes to Prism (its ``with_exception_handling`` steps are among what DirectRunner keeps off Prism, so it
runs on the ``FnApiRunner``), and ``test_convert`` checks that it stays so. The single-step tests name that runner.

Example::

    import beam_runs   # tests/ is on sys.path under pytest

    with beam_runs.unit_pipeline() as p:
        ...
    with beam_runs.runner_log() as said:
        convert.run(argv)
    assert not beam_runs.prism_tried(said)
"""

from __future__ import annotations

import contextlib
import logging

from apache_beam.testing.test_pipeline import TestPipeline

# The runner DirectRunner falls back to when Prism is not used: the one the conversion's local runs use.
UNIT_RUNNER = "FnApiRunner"
_RUNNERS_LOGGER = "apache_beam.runners"  # DirectRunner says here that it tries Prism; the FnApiRunner logs its stages.
_FN_API_LOGGER = "apache_beam.runners.portability.fn_api_runner"


def unit_pipeline(**kwargs) -> TestPipeline:
    """A ``TestPipeline`` on :data:`UNIT_RUNNER`, in this process."""
    return TestPipeline(runner=UNIT_RUNNER, **kwargs)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.getMessage()))


@contextlib.contextmanager
def runner_log():
    """Collects ``(logger, message)`` of Beam's runners, debug messages included, for the duration of the block."""
    logger, handler = logging.getLogger(_RUNNERS_LOGGER), _Collect()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def prism_tried(records: list[tuple[str, str]]) -> list[str]:
    """The messages that say a run tried Prism."""
    return [message for _, message in records if "prism" in message.lower()]


def fn_api_ran(records: list[tuple[str, str]]) -> bool:
    """Whether the ``FnApiRunner`` ran stages (it logs each at debug level)."""
    return any(name.startswith(_FN_API_LOGGER) for name, _ in records)
