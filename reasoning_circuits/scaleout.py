"""Attention profiles of many traces split across processes or GPUs, merged in trace order.

Profiling thousands of long traces is embarrassingly parallel: every trace is profiled on its
own. Under HF ``accelerate`` each process takes a contiguous share of the traces
(``PartialState.split_between_processes``), profiles it on its own device, and writes its
share to one file of a shared directory; :func:`merge_profiles` reads the shares back into one
:class:`~reasoning_circuits.attention.ProfileSet` in the original trace order::

    # profile.py, run as:  accelerate launch --num_processes 4 profile.py
    import reasoning_circuits as rc
    from accelerate import PartialState

    state = PartialState()
    model = rc.load_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", device=state.device)
    traces = rc.read_traces("traces.jsonl", model.tokenizer)
    rc.scaleout.profile_shard(model, traces, "profiles/", state=state, batch_size=4)

    # afterwards, in one process
    profiles = rc.scaleout.merge_profiles("profiles/")

On a machine without GPUs, ``torchrun --nproc_per_node 2 profile.py`` (or ``accelerate launch
--multi_gpu --num_processes 2``) starts CPU processes; the default state then forms a CPU
process group. Every process must see the same traces in the same order (read the same
file). A share is written atomically as ``shard-RANK-of-WORLD.npz``; each profile carries its
trace's index (``metadata["trace_index"]``) and a fingerprint of the run (the traces' ids
and the options, ``metadata["run"]``). A rerun finds a complete share of the same run and
skips it, so a job killed half-way redoes only the missing shares. :func:`merge_profiles`
refuses a directory whose shares do not cover every trace exactly once (a missing or foreign
share).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reasoning_circuits._inputs import as_traces
from reasoning_circuits.attention import AttentionProfile, ProfileSet
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.trace import Trace

__all__ = ["merge_profiles", "profile_shard"]


def _shard_path(directory: Path, rank: int, world: int) -> Path:
    return directory / f"shard-{rank:05d}-of-{world:05d}.npz"


def profile_shard(
    model: Any,
    traces: Trace | Sequence[Trace],
    out_dir: str | Path,
    *,
    state: Any = None,
    **options: Any,
) -> Path:
    """Profile this process's share of ``traces`` and write it to ``out_dir``.

    Args:
        model: this process's model (on its own device, e.g. ``state.device``).
        traces: all traces, the same sequence in every process.
        out_dir: a directory every process can write to.
        state: an ``accelerate.PartialState`` (default: a new one, which reads the
            environment ``accelerate launch`` or ``torchrun`` sets, on the CPU when the model
            is; a plain ``python`` run is one process).
        **options: passed to :meth:`AttentionProfile.compute` (``by``, ``statistics``,
            ``queries``, ``layers``, ``heads``, ``batch_size``, ``progress``).

    Returns:
        The path of this process's share.
    """
    if state is None:
        from accelerate import PartialState

        # on CPU, accelerate forms a process group only when told it runs on the CPU
        state = PartialState(cpu=torch.device(model.cfg.device).type == "cpu")
    trace_list = as_traces(traces)
    rank, world = int(state.process_index), int(state.num_processes)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(list(range(len(trace_list)))) as share:
        indices = [int(i) for i in share]
    target = _shard_path(directory, rank, world)
    run = _run_fingerprint(trace_list, options)
    if target.exists():
        done = ProfileSet.load(target)
        found = [p.metadata.get("trace_index") for p in done]
        if found == indices and all(p.metadata.get("run") == run for p in done):
            return target  # this share was finished by an earlier run
        raise FileFormatError(
            f"{target} holds traces {found[:5]}... of another run (this run's share is "
            f"{indices[:5]}... of {len(trace_list)}); use an empty out_dir"
        )
    if not indices:
        raise ValueError(
            f"process {rank} of {world} got no trace ({len(trace_list)} traces); run fewer "
            "processes than traces"
        )
    result = AttentionProfile.compute(model, [trace_list[i] for i in indices], **options)
    profiles = result if isinstance(result, ProfileSet) else ProfileSet([result])
    tagged = [
        dataclasses.replace(
            profile,
            metadata={
                **profile.metadata,
                "trace_index": i,
                "n_traces": len(trace_list),
                "run": run,
            },
        )
        for profile, i in zip(profiles, indices)
    ]
    return ProfileSet(tagged).save(target)


def _run_fingerprint(traces: Sequence[Trace], options: dict[str, Any]) -> str:
    """SHA-256 of the traces' ids and the profile options: shares of one run agree on it."""
    digest = hashlib.sha256()
    for trace in traces:
        digest.update(",".join(map(str, trace.ids)).encode() + b";")
    chosen = sorted((k, repr(v)) for k, v in options.items() if k != "progress")
    digest.update(repr(chosen).encode())
    return digest.hexdigest()[:16]


def merge_profiles(out_dir: str | Path) -> ProfileSet:
    """Read every share in ``out_dir`` into one :class:`ProfileSet` in trace order."""
    directory = Path(out_dir)
    paths = sorted(directory.glob("shard-*-of-*.npz"))
    if not paths:
        raise FileNotFoundError(
            f"no shard-*-of-*.npz files in {directory}; run profile_shard in every process first"
        )
    worlds = {p.stem.rsplit("-of-", 1)[1] for p in paths}
    if len(worlds) > 1:
        raise FileFormatError(
            f"{directory} holds shares of runs with different process counts "
            f"({sorted(worlds)}); keep one run's shares per directory"
        )
    by_index: dict[int, AttentionProfile] = {}
    totals: set[int] = set()
    runs: set[str] = set()
    for path in paths:
        for profile in ProfileSet.load(path):
            index = profile.metadata.get("trace_index")
            if index is None:
                raise FileFormatError(f"{path} was not written by profile_shard (no trace index)")
            if index in by_index:
                raise FileFormatError(f"trace {index} appears in two shares ({path})")
            by_index[int(index)] = profile
            totals.add(int(profile.metadata["n_traces"]))
            runs.add(str(profile.metadata.get("run")))
    if len(runs) > 1:
        raise FileFormatError(
            f"{directory} holds shares of {len(runs)} runs (other traces or options); keep "
            "one run's shares per directory"
        )
    (total,) = totals if len(totals) == 1 else (None,)
    if total is None:
        raise FileFormatError(f"the shares disagree on the number of traces: {sorted(totals)}")
    missing = sorted(set(range(total)) - set(by_index))
    if missing:
        world = int(next(iter(worlds)))
        raise FileFormatError(
            f"{len(missing)} of {total} traces have no profile (first: {missing[:5]}); "
            f"{len(paths)} of {world} shares are present. Rerun the job: finished shares "
            "are skipped"
        )
    return ProfileSet([by_index[i] for i in range(total)])
