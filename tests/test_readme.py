"""The README's short example runs exactly as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def example_code() -> str:
    """The python blocks of the README's "## A short example" section, joined."""
    text = README.read_text()
    section = re.search(r"^## A short example\n(.*?)(?=^## )", text, re.S | re.M)
    assert section is not None, "README.md has no '## A short example' section"
    blocks = re.findall(r"^```python\n(.*?)^```", section[1], re.S | re.M)
    assert blocks, "the '## A short example' section has no ```python block"
    return "\n".join(blocks)


def test_example_is_short_and_compiles():
    code = example_code()
    assert len(code.strip().splitlines()) <= 35
    compile(code, "README.md", "exec")


def test_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves files: they go to tmp_path
    namespace: dict = {"__name__": "__readme__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example_code(), "README.md", "exec"), namespace)
    printed = out.getvalue()

    # what the comments claim is what it prints
    claimed = re.search(r"print\(traces\[0\]\)\s+# (.*?)\.\.\.\)", example_code())[1]
    assert printed.startswith(claimed), (claimed, printed[:200])
    assert namespace["traces"][0].sentence_texts == [
        s.strip() for s in re.findall(r"[^.]+\.", namespace["problems"][0].reasoning)
    ]

    # indices valid for the 4-layer, 8-head model; files written where it ran
    assert all(0 <= h.layer < 4 and 0 <= h.head < 8 for h in namespace["rfhs"])
    # ranked at the emitting row, the top head is the model card's causal copy head, and
    # mean-ablating it costs answer log-probability (the printed CI lies below 0)
    assert namespace["rfhs"][0] == namespace["rc"].Head(0, 5)
    high = float(re.search(r"CI \[[-+\d.]+, ([-+\d.]+)\]", printed)[1])
    assert high < -1.0
    assert (tmp_path / "profiles.npz").is_file()
    assert (tmp_path / "residual_patching.png").is_file()

    # the probe pair measures the answer digit: the clean run prefers 8, the corrupted 9
    sweep, pair = namespace["sweep"], namespace["pair"]
    assert sweep.clean > 2 and sweep.corrupted < -2
    clean_tokens, corrupted_tokens = pair.clean_tokens[0], pair.corrupted_tokens[0]
    assert clean_tokens[-1] == corrupted_tokens[-1]  # the same position ...
    assert clean_tokens[-1] != namespace["tok"].eos_token_id  # ... and it is not EOS
    differing = (clean_tokens != corrupted_tokens).nonzero().flatten().tolist()
    tok = namespace["tok"]
    # the pair differs in the number (8 vs 5), what the reasoning computes from it, the probe
    assert tok.decode(clean_tokens[differing[0]]) == "8"
    assert tok.decode(corrupted_tokens[differing[0]]) == "5"
    # patching the residual at the last position from layer 1 on restores the clean answer
    normalized = sweep.normalized()
    assert np.allclose(normalized[1:, -1], 1.0, atol=0.05)
    assert "answer ' '" in printed  # the printed rows include the last position
