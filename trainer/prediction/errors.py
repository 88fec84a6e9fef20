"""The prediction commands' own errors."""

from __future__ import annotations


class PredictError(ValueError):
    """An export or input that cannot be predicted on (missing face stage, no videos, clashing names)."""


class PredictUsageError(PredictError):
    """Options and inputs that do not fit together (exit status 2, nothing written): crop folders without their
    video, an export trained on provided crops served without them, ..."""
