"""Exceptions raised by reasoning_circuits.

Each one subclasses the built-in exception a caller would expect (``ValueError``,
``OSError``), so ``except ValueError`` keeps working, and each message says what was wrong
and how to fix it.
"""

from __future__ import annotations


class TraceFormatError(ValueError):
    """A text or token sequence is not of the form ``prompt <think> reasoning </think> answer``."""


class ContextLengthError(ValueError):
    """A trace is longer than the model's context window."""


class ModelLoadError(OSError):
    """A model name or directory could not be loaded."""


class ProfileMismatchError(ValueError):
    """Attention profiles that are combined do not share segments, layers or heads."""


class PairAlignmentError(ValueError):
    """Clean and corrupted sequences cannot be put in one position frame for patching."""


class TokenizerMismatchError(ValueError):
    """A trace was made by another tokenizer than the model's."""


class FileFormatError(ValueError):
    """A saved result file is of another kind, a newer format, or was edited after saving."""
