"""Saving results: one ``.npz`` per result, arrays plus a JSON header, written atomically.

Every file says what it is: the header records its ``kind`` (``"AttentionProfile"``,
``"PatchSweep"``, …), the ``format_version`` of the layout and a SHA-256 ``checksum`` of the
header and the arrays. :func:`load_npz` refuses a file of another kind, of a newer format, or
whose content no longer matches its checksum (a header edited by hand, labels reordered, an
array replaced), each with a :class:`~reasoning_circuits.errors.FileFormatError` that says so.
Numbers derived from the arrays are not stored in the header; they are recomputed on load.

No pickle anywhere: ``np.load(..., allow_pickle=False)`` reads only plain arrays, so a
result file from someone else cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from reasoning_circuits.errors import FileFormatError

__all__ = ["FORMAT_VERSION", "load_npz", "plain", "save_npz"]

FORMAT_VERSION = 1
"""Version of the file layout; a file with a larger number was written by a newer release."""


def plain(value: Any) -> Any:
    """JSON-ready copy of ``value``: NumPy scalars and arrays become Python numbers and lists,
    tuples become lists, mapping keys become strings."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _checksum(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_npz(
    path: str | Path, kind: str, header: dict[str, Any], arrays: dict[str, np.ndarray]
) -> Path:
    """Write ``arrays`` and ``header`` (plus kind, format version and checksum) to ``path``
    (``.npz`` appended if missing) atomically: a crash leaves the old file or the new one."""
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_suffix(target.suffix + ".npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    full = plain({**header, "kind": kind, "format_version": FORMAT_VERSION})
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    for name, array in arrays.items():
        if array.dtype == object:
            raise TypeError(
                f"array {name!r} has dtype object, which cannot be saved without pickle"
            )
    full["checksum"] = _checksum(full, arrays)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.npz")
    try:
        payload: dict[str, Any] = {"__header__": np.array(json.dumps(full)), **arrays}
        np.savez(tmp, **payload)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def load_npz(
    path: str | Path, kind: str | tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`save_npz` and check it is a ``kind`` file that is intact.

    Returns ``(header, arrays)``. Raises :class:`FileFormatError` for another kind, a newer
    format version or a checksum mismatch, and ``FileNotFoundError`` for a missing file.
    """
    source = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    try:
        with np.load(source, allow_pickle=False) as data:
            if "__header__" not in data.files:
                raise FileFormatError(
                    f"{source} is not a reasoning_circuits result file (no header)"
                )
            header = json.loads(str(data["__header__"]))
            arrays = {k: data[k] for k in data.files if k != "__header__"}
    except (ValueError, OSError) as err:
        if isinstance(err, FileFormatError | FileNotFoundError):
            raise
        raise FileFormatError(f"{source} is not a readable .npz result file: {err}") from err
    found = header.get("kind")
    if found is None or "format_version" not in header:
        raise FileFormatError(
            f"{source} has no kind or format version: it was written before result files were "
            "versioned (reasoning_circuits < 0.2). Recompute and save it again"
        )
    if found not in kinds:
        raise FileFormatError(
            f"{source} holds a {found}, not a {' or '.join(kinds)}; load it with "
            f"rc.{found}.load(path)"
        )
    version = int(header["format_version"])
    if version > FORMAT_VERSION:
        raise FileFormatError(
            f"{source} uses format version {version}, newer than this release reads "
            f"({FORMAT_VERSION}); upgrade reasoning_circuits to read it"
        )
    stored = header.pop("checksum", None)
    if stored != _checksum(header, arrays):
        raise FileFormatError(
            f"{source} does not match its checksum: its header or arrays were changed after it "
            "was saved (e.g. labels edited or reordered), so its labels cannot be trusted. "
            "Recompute and save it again"
        )
    return header, arrays
