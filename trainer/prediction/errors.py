"""The prediction commands' own error."""

from __future__ import annotations


class PredictError(ValueError):
    """An export or input that cannot be predicted on (missing face stage, no videos, clashing names)."""
