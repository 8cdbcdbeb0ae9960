"""Every saved file says what it is, which format it uses, and refuses to load when edited."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import reasoning_circuits as rc
from reasoning_circuits._store import FORMAT_VERSION
from reasoning_circuits.effects import Effect
from reasoning_circuits.patching import PatchSweep


def _profile(metadata=None) -> rc.AttentionProfile:
    rng = np.random.default_rng(0)
    masses = rng.dirichlet(np.ones(3), size=(2, 2, 3))
    return rc.AttentionProfile(
        parts=("prompt", "reasoning", "answer"),
        layers=(0, 1),
        heads=(0, 1),
        masses=masses,
        per_token_masses=None,
        entropies=rng.uniform(size=(2, 2, 3)),
        ginis=None,
        token_counts=np.array([4, 7, 3]),
        metadata=metadata or {"id": "p1"},
    )


def _results():
    profile = _profile()
    sweep = PatchSweep(
        np.arange(6.0).reshape(2, 3),
        ("layer", "head"),
        {"layer": [0, 1], "head": [0, 1, 2]},
        clean=5.0,
        corrupted=0.0,
    )
    effect = Effect(
        np.array([1.0, 2.0, 3.0]),
        np.array([0.5, 1.0, 2.5]),
        (-1.0, -0.1),
        0.9,
        "t",
        0.04,
        "answer_logprob",
    )
    ranking = rc.rank_heads(np.random.default_rng(0).uniform(size=(5, 2, 3)), k=4)
    return {
        "AttentionProfile": (profile, rc.AttentionProfile),
        "ProfileSet": (rc.ProfileSet([profile, _profile({"id": "p2"})]), rc.ProfileSet),
        "PatchSweep": (sweep, PatchSweep),
        "Effect": (effect, Effect),
        "HeadRanking": (ranking, rc.HeadRanking),
    }


def _header(path):
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["__header__"])), {k: data[k] for k in data.files}


def _rewrite(path, header, arrays):
    arrays = dict(arrays)
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "kind", ["AttentionProfile", "ProfileSet", "PatchSweep", "Effect", "HeadRanking"]
)
def test_files_record_kind_and_version_and_round_trip(tmp_path, kind):
    result, cls = _results()[kind]
    path = result.save(tmp_path / "result")
    header, _ = _header(path)
    assert header["kind"] == kind and header["format_version"] == FORMAT_VERSION
    again = cls.load(path)
    assert repr(again) == repr(result)


@pytest.mark.parametrize(
    "kind", ["AttentionProfile", "ProfileSet", "PatchSweep", "Effect", "HeadRanking"]
)
def test_loading_the_wrong_kind_names_both(tmp_path, kind):
    results = _results()
    result, _ = results[kind]
    path = result.save(tmp_path / "result")
    other = next(cls for name, (_, cls) in results.items() if name != kind)
    with pytest.raises(rc.FileFormatError, match=f"holds a {kind}, not a .*rc.{kind}.load"):
        other.load(path)


def test_a_newer_format_is_refused(tmp_path):
    path = _profile().save(tmp_path / "p")
    header, arrays = _header(path)
    header["format_version"] = FORMAT_VERSION + 1
    _rewrite(path, header, {k: v for k, v in arrays.items() if k != "__header__"})
    with pytest.raises(rc.FileFormatError, match="newer"):
        rc.AttentionProfile.load(path)


def test_reordered_part_names_are_refused(tmp_path):
    # today's failure: reordered names loaded silently with wrong labels
    path = _profile().save(tmp_path / "p")
    header, arrays = _header(path)
    header["parts"] = list(reversed(header["parts"]))
    _rewrite(path, header, {k: v for k, v in arrays.items() if k != "__header__"})
    with pytest.raises(rc.FileFormatError, match="checksum"):
        rc.AttentionProfile.load(path)


def test_an_edited_effect_is_refused_and_derived_numbers_are_not_stored(tmp_path):
    effect = _results()["Effect"][0]
    path = effect.save(tmp_path / "e")
    header, arrays = _header(path)
    assert "mean_diff" not in header  # derived from the arrays on load
    arrays = {k: v for k, v in arrays.items() if k != "__header__"}
    arrays["after"] = arrays["after"] + 123.0
    _rewrite(path, header, arrays)
    with pytest.raises(rc.FileFormatError, match="checksum"):
        Effect.load(path)


def test_files_without_a_kind_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.npz"
    np.savez(path, __header__=np.array(json.dumps({"parts": []})), masses=np.zeros(1))
    with pytest.raises(rc.FileFormatError, match="before result files were versioned"):
        rc.AttentionProfile.load(path)


def test_numpy_scalars_in_metadata_save(tmp_path):
    profile = _profile(
        {"id": "p1", "level": np.int64(3), "score": np.float32(0.5), "n": [np.int8(2)]}
    )
    again = rc.AttentionProfile.load(profile.save(tmp_path / "p"))
    assert again.metadata == {"id": "p1", "level": 3, "score": 0.5, "n": [2]}


def test_an_effect_keeps_its_confidence_level(tmp_path):
    effect = _results()["Effect"][0]
    assert "90% CI" in str(effect)
    assert Effect.load(effect.save(tmp_path / "e")).confidence == 0.9


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere: at the top, inside functions
    and under ``if TYPE_CHECKING:`` (a cycle there is still a tangle for readers and mypy)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("reasoning_circuits.")}
    return found


def test_the_package_has_no_import_cycle():
    root = Path(rc.__file__).parent
    modules = {
        "reasoning_circuits." + ".".join(p.relative_to(root).with_suffix("").parts): p
        for p in root.rglob("*.py")
        if p.name != "__init__.py"
    }
    graph = {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(name for name in graph if name in reach(name))
    assert not cycles, f"modules in an import cycle: {cycles}"
    assert "reasoning_circuits.interventions" not in reach("reasoning_circuits.metrics")
