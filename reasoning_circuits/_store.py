"""Saving results: one ``.npz`` per result, arrays plus a JSON header, written atomically.

No pickle anywhere: ``np.load(..., allow_pickle=False)`` reads only plain arrays, so a
result file from someone else cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_npz", "save_npz"]


def save_npz(path: str | Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    target = Path(path)
    if target.suffix != ".npz":
        target = target.with_suffix(target.suffix + ".npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp.npz")
    payload: dict[str, Any] = {"__header__": np.array(json.dumps(header)), **arrays}
    np.savez(tmp, **payload)
    tmp.replace(target)  # atomic: a crash leaves the old file or the new one, never half
    return target


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(Path(path), allow_pickle=False) as data:
        header = json.loads(str(data["__header__"]))
        arrays = {k: data[k] for k in data.files if k != "__header__"}
    return header, arrays
