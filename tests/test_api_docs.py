"""docs/api.md documents the signatures the code has: names, kinds and defaults.

The convention (stated at the top of docs/api.md): in the first column of every table row,
each backtick span that looks like a call, ``PATH(PARAMETERS)``, documents one callable's
complete signature in Python syntax, without annotations. ``PATH`` is

* ``rc.NAME...`` or ``reasoning_circuits.NAME...``: a module attribute path;
* ``Class.method``: a class of the package (``AttentionProfile.load``);
* ``obj.method``: a method called on an instance, ``obj`` one of :data:`INSTANCES` below
  (``trace.text_of``); ``self`` is not written.

A span may be wrapped as a context manager: ``with PATH(PARAMETERS):``. Non-call spans of
the form ``obj.attribute`` must name an existing attribute. Every public name of the package
(``__all__`` of the modules in :data:`MODULES`) must appear in the document.

When this fails, the message lists every row that differs from the code and how, with the
code's signature written in the document's convention, ready to paste.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import reasoning_circuits as rc
from reasoning_circuits.interventions import Effect
from reasoning_circuits.patching import PatchSweep

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"

INSTANCES: dict[str, type] = {
    "trace": rc.Trace,
    "seg": rc.Segment,
    "profile": rc.AttentionProfile,
    "profiles": rc.ProfileSet,
    "ranking": rc.HeadRanking,
    "iv": rc.HeadIntervention,
    "effect": Effect,
    "pair": rc.PatchPair,
    "sweep": PatchSweep,
}
"""Instance names the document may call methods on, and their classes."""

MODULES = (
    "reasoning_circuits",
    "reasoning_circuits.generation",
    "reasoning_circuits.metrics",
    "reasoning_circuits.organism",
    "reasoning_circuits.pairs",
    "reasoning_circuits.patching",
    "reasoning_circuits.plotting",
    "reasoning_circuits.testing",
    "reasoning_circuits.stats",
    "reasoning_circuits.grading",
    "reasoning_circuits.datasets",
    "reasoning_circuits.rows",
    "reasoning_circuits.reading",
    "reasoning_circuits.fitting",
    "reasoning_circuits.effects",
    "reasoning_circuits.receivers",
    "reasoning_circuits.comparison",
    "reasoning_circuits.scaleout",
    "reasoning_circuits.evaluation",
    "reasoning_circuits.judging",
    "reasoning_circuits.anchors",
    "reasoning_circuits.rollouts",
    "reasoning_circuits.verification",
    "reasoning_circuits.categories",
    "reasoning_circuits.anchor_records",
    "reasoning_circuits.study_figures",
)
"""Modules whose public names (``__all__``) must all appear in the document."""

_CALL = re.compile(r"^(?:with\s+)?([A-Za-z_][\w.]*)\((.*)\)(?::(?:\s*…)?)?$", re.S)
_ATTRIBUTE = re.compile(r"^([a-z_]\w*)\.([A-Za-z_]\w*)$")
_EMPTY = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Documented:
    line: int
    path: str
    params: str

    def where(self) -> str:
        return f"docs/api.md:{self.line} `{self.path}({self.params})`"


def _first_cells() -> list[tuple[int, str]]:
    """``(line number, first cell)`` of every table row except headers and rules."""
    cells = []
    for number, line in enumerate(API.read_text().splitlines(), 1):
        if not line.startswith("|") or re.match(r"^\|[-| :]+\|$", line):
            continue
        # split on | outside backticks (`a | b` inside a span is not a column break)
        cell, in_code = "", False
        for char in line[1:]:
            if char == "`":
                in_code = not in_code
            if char == "|" and not in_code:
                break
            cell += char
        if cell.strip() not in ("call", ""):
            cells.append((number, cell))
    return cells


def _spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_calls() -> list[Documented]:
    calls = []
    for number, cell in _first_cells():
        for span in _spans(cell):
            match = _CALL.match(span.strip())
            if match and not span.startswith("python "):
                calls.append(Documented(number, match[1], match[2]))
    return calls


def _find_class(name: str) -> Any:
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if inspect.isclass(getattr(module, name, None)):
            return getattr(module, name)
    for module_name in ("reasoning_circuits.interventions", "reasoning_circuits.attention"):
        module = importlib.import_module(module_name)
        if inspect.isclass(getattr(module, name, None)):
            return getattr(module, name)
    raise LookupError(f"no class {name!r} in the package")


def _attribute(owner: Any, name: str) -> Any:
    """``owner.name``, importing ``owner.name`` first when it is a submodule not yet loaded."""
    if inspect.ismodule(owner) and not hasattr(owner, name):
        importlib.import_module(f"{owner.__name__}.{name}")
    return getattr(owner, name)


def resolve(path: str) -> tuple[Callable[..., Any], bool]:
    """The object a documented path names, and whether its first parameter is ``self``."""
    parts = path.split(".")
    if parts[0] in ("rc", "reasoning_circuits"):
        owner: Any = rc
        for part in parts[1:-1]:
            owner = _attribute(owner, part)
        if inspect.isclass(owner):
            return _method(owner, parts[-1])
        return _attribute(owner, parts[-1]), False
    if parts[0] in INSTANCES and len(parts) == 2:
        return _method(INSTANCES[parts[0]], parts[1])
    if parts[0][:1].isupper() and len(parts) <= 2:
        cls = _find_class(parts[0])
        return (cls, False) if len(parts) == 1 else _method(cls, parts[1])
    raise LookupError(
        f"cannot resolve {path!r}: start with rc., a class name, or one of {sorted(INSTANCES)} "
        "(add new instance names to INSTANCES in tests/test_api_docs.py)"
    )


def _method(cls: type, name: str) -> tuple[Callable[..., Any], bool]:
    static = inspect.getattr_static(cls, name)
    bound = getattr(cls, name)
    if isinstance(static, (staticmethod, classmethod)):
        return bound, False
    return bound, True


def parse(params: str) -> list[inspect.Parameter]:
    """Documented parameters as ``inspect.Parameter`` (defaults as source text)."""
    tree = ast.parse(f"def _({params}): pass").body[0]
    assert isinstance(tree, ast.FunctionDef)
    args = tree.args
    out: list[inspect.Parameter] = []
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults += list(args.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = (
            inspect.Parameter.POSITIONAL_ONLY
            if i < len(args.posonlyargs)
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        out.append(_param(arg.arg, kind, default))
    if args.vararg:
        out.append(_param(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults):
        out.append(_param(arg.arg, inspect.Parameter.KEYWORD_ONLY, kw_default))
    if args.kwarg:
        out.append(_param(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    return out


def _param(name: str, kind: Any, default: ast.expr | None) -> inspect.Parameter:
    value = _EMPTY if default is None else ast.unparse(default)
    return inspect.Parameter(name, kind, default=value)


def _same_default(documented: str, real: Any) -> bool:
    if documented in ("nan", "math.nan"):
        return isinstance(real, float) and real != real
    try:
        value = ast.literal_eval(documented)
    except (ValueError, SyntaxError):
        # a name: the real default's own name (a function, a class, an enum member)
        name = getattr(real, "__name__", None) or getattr(real, "name", None)
        return documented.split(".")[-1] == name
    if isinstance(real, enum.Enum):
        real = real.value
    if isinstance(value, bool) or isinstance(real, bool):
        return value is real
    if isinstance(value, (int, float)) and isinstance(real, (int, float)):
        return value == real  # 1e-3 and 0.001, 1 and 1.0
    return type(value) is type(real) and value == real


def render_default(value: Any) -> str:
    """A default in the document's style: double-quoted strings, functions by name."""
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        inner = ", ".join(render_default(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


def render(params: list[inspect.Parameter]) -> str:
    """Parameters in the document's convention (no annotations, ``*`` before keyword-only)."""
    out, star = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
            out.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.default is _EMPTY:
            out.append(p.name)
        else:
            out.append(f"{p.name}={render_default(p.default)}")
    return ", ".join(out)


def _real_parameters(target: Any) -> list[inspect.Parameter]:
    """The code's parameters; a dataclass field's ``default_factory`` stands as its value."""
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(target) and dataclasses.is_dataclass(target):
        factories = {
            f.name: f.default_factory
            for f in dataclasses.fields(target)
            if f.default_factory is not dataclasses.MISSING
        }
        params = [
            p.replace(default=factories[p.name]()) if p.name in factories else p for p in params
        ]
    return params


def differences(doc: Documented) -> list[str]:
    """What differs between a documented signature and the code's (empty: they agree)."""
    try:
        target, drop_self = resolve(doc.path)
    except (LookupError, AttributeError, ImportError) as err:
        return [f"{doc.where()}: {err}"]
    try:
        documented = parse(doc.params)
    except SyntaxError as err:
        return [f"{doc.where()}: not a Python parameter list ({err.msg}); write it as in a def"]
    real = _real_parameters(target)
    if drop_self and real and real[0].name in ("self", "cls"):
        real = real[1:]
    want = render(real)
    problems = []
    real_by_name = {p.name: p for p in real}
    doc_by_name = {p.name: p for p in documented}
    for p in real:
        if p.name not in doc_by_name:
            problems.append(f"missing parameter `{p.name}`")
    for p in documented:
        if p.name not in real_by_name:
            problems.append(f"documents `{p.name}`, which the code does not have")
            continue
        r = real_by_name[p.name]
        if p.kind != r.kind:
            problems.append(
                f"`{p.name}` is {r.kind.description} in the code, {p.kind.description} here"
            )
        if (p.default is _EMPTY) != (r.default is _EMPTY):
            problems.append(
                f"`{p.name}` is required here but defaults to {render_default(r.default)}"
                if p.default is _EMPTY
                else f"`{p.name}` has no default in the code, here {p.default}"
            )
        elif p.default is not _EMPTY and not _same_default(p.default, r.default):
            problems.append(
                f"`{p.name}` defaults to {render_default(r.default)} in the code, here {p.default}"
            )
    if not problems and [p.name for p in documented] != [p.name for p in real]:
        problems.append("parameters in a different order")
    if problems:
        return [f"{doc.where()}: {'; '.join(problems)}. The code: `{doc.path}({want})`"]
    return []


def test_the_document_states_its_convention():
    assert "complete signature" in API.read_text()


def test_there_are_signatures_to_check():
    calls = documented_calls()
    assert len(calls) >= 50
    assert any(c.path == "rc.load_model" for c in calls)


def test_every_documented_signature_matches_the_code():
    problems = [problem for doc in documented_calls() for problem in differences(doc)]
    assert not problems, "docs/api.md differs from the code:\n" + "\n".join(problems)


def test_documented_attributes_exist():
    problems = []
    for number, cell in _first_cells():
        for span in _spans(cell):
            match = _ATTRIBUTE.match(span.strip())
            if not match or match[1] not in INSTANCES:
                continue
            cls = INSTANCES[match[1]]
            fields = (
                {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            )
            if not hasattr(cls, match[2]) and match[2] not in fields:
                problems.append(f"docs/api.md:{number} `{span}`: no {cls.__name__}.{match[2]}")
    assert not problems, "\n".join(problems)


def test_every_public_name_is_documented():
    text = API.read_text()
    spans = " ".join(re.findall(r"`([^`]+)`", text))
    missing = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            if inspect.ismodule(getattr(module, name)):
                continue
            if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", spans):
                missing.append(f"{module_name}.{name}")
    assert not missing, "public names missing from docs/api.md: " + ", ".join(missing)


# ---- the checker itself must catch what it is for (known answers on made-up rows)


def _check(path: str, params: str) -> list[str]:
    return differences(Documented(0, path, params))


def test_checker_accepts_a_correct_row_and_flags_each_kind_of_difference():
    def check(params: str) -> list[str]:
        return _check("rc.load_model", f"name_or_path, *, {params}")

    assert check("device=None, dtype=None, **boot_kwargs") == []
    (missing,) = check("device=None, dtype=None")
    assert "missing parameter `boot_kwargs`" in missing
    code = "rc.load_model(name_or_path, *, device=None, dtype=None, **boot_kwargs)"
    assert f"The code: `{code}`" in missing
    (kind,) = _check("rc.load_model", "name_or_path, device=None, dtype=None, **boot_kwargs")
    assert "`device` is keyword-only in the code" in kind
    (default,) = check("device=None, dtype='bf16', **boot_kwargs")
    assert "`dtype` defaults to None in the code, here 'bf16'" in default
    (extra,) = check("device=None, dtype=None, cache=1, **boot_kwargs")
    assert "documents `cache`" in extra
    (required,) = check("device, dtype=None, **boot_kwargs")
    assert "`device` is required here but defaults to None" in required
    (order,) = check("dtype=None, device=None, **boot_kwargs")
    assert "different order" in order
    (syntax,) = check('dtype="bf16" | "fp16"')  # alternatives belong in the description
    assert "defaults to None in the code" in syntax or "not a Python parameter list" in syntax


def test_checker_handles_methods_classmethods_and_function_defaults():
    assert _check("trace.text_of", "segment") == []  # an instance method: no self
    assert _check("AttentionProfile.load", "path") == []
    # a default that is not a literal (a function, a class) is written by its name; the
    # code's one such default today is the class `str` in rc.datasets._field(..., types=str)
    sig = inspect.signature(rc.datasets._field)
    row = render(list(sig.parameters.values()))
    assert "types=str" in row
    assert _check("rc.datasets._field", row) == []
    (wrong,) = _check("rc.datasets._field", row.replace("types=str", "types=int"))
    assert "`types` defaults to str in the code, here int" in wrong
    # a function object renders and compares by its name as well
    grader = rc.generation.same_final_number
    assert render_default(grader) == "same_final_number"
    assert _same_default("same_final_number", grader)
    assert _same_default("rc.generation.same_final_number", grader)
    assert not _same_default("answers_correct", grader)
    (unknown,) = _check("thing.method", "")
    assert "cannot resolve" in unknown
