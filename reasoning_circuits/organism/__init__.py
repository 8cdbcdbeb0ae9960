"""The tiny reasoner: a model organism of chain-of-thought use, trained here, shipped here.

``rc.load_model("tiny-reasoner")`` loads it (offline, in seconds). Its task
(:mod:`reasoning_circuits.organism.task`) makes the answer depend on the reasoning, so its
reasoning-focused heads are real, not planted. ``MODEL_CARD.md`` beside the weights records
how it was trained and what it measurably does.
"""

from reasoning_circuits.organism.task import (
    FILLERS,
    PROMPT_MODES,
    Problem,
    format_completion,
    format_prompt,
    make_problems,
    solve,
)

__all__ = [
    "FILLERS",
    "PROMPT_MODES",
    "Problem",
    "format_completion",
    "format_prompt",
    "make_problems",
    "solve",
]
