"""Option strings checked against their ``Literal`` type, with a did-you-mean hint."""

from __future__ import annotations

import difflib
from typing import Any, get_args

__all__ = ["check_option"]


def check_option(value: Any, options: Any, name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is one of the strings of the ``Literal`` ``options``
    (or of a plain tuple of strings)."""
    allowed = get_args(options) or tuple(options)
    if value in allowed:
        return
    by_lower = {str(a).lower(): a for a in allowed}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1, cutoff=0.5)
    hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
    raise ValueError(
        f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}{hint}"
    )
