"""Errors the pipeline reports to the user: the CLI prints them and exits non-zero."""

from __future__ import annotations


class ConversionError(RuntimeError):
    """The input cannot be converted as asked; the message says why and what to do."""


class GateError(ConversionError):
    """A model failed a parity or accuracy gate."""
