"""The tiny reasoner: a model organism of chain-of-thought use, trained here, shipped here.

``rc.load_model("tiny-reasoner")`` loads it (offline, in seconds). Its task
(:mod:`reasoning_circuits.organism.task`) makes the answer depend on the reasoning, so its
reasoning-focused heads are real, not planted. ``MODEL_CARD.md`` beside the weights records
how it was trained and what it measurably does.

Modules: :mod:`~reasoning_circuits.organism.task` (problems and prompts),
:mod:`~reasoning_circuits.organism.analysis` (generation, accuracy, the heads the answer
needs, every number of the card), :mod:`~reasoning_circuits.organism.card` (the card's
template), and two commands, ``python -m reasoning_circuits.organism.train`` and
``python -m reasoning_circuits.organism.evaluate``.

The shipped tokenizer adds BOS itself, so the directory works with plain ``transformers``
(``AutoTokenizer`` + ``AutoModelForCausalLM.generate``) as well as through the library.
"""

from reasoning_circuits.organism.analysis import (
    CHANCE_RATE,
    HELDOUT_SEED,
    Generated,
    accuracy,
    answer_accuracy,
    answer_outcomes,
    emitting_mass,
    forced_traces,
    generate,
    gold_value,
    judge_answer,
    measure,
)
from reasoning_circuits.organism.card import render_model_card, write_model_card
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
    "CHANCE_RATE",
    "FILLERS",
    "HELDOUT_SEED",
    "PROMPT_MODES",
    "Generated",
    "Problem",
    "accuracy",
    "answer_accuracy",
    "answer_outcomes",
    "emitting_mass",
    "forced_traces",
    "format_completion",
    "format_prompt",
    "generate",
    "gold_value",
    "judge_answer",
    "make_problems",
    "measure",
    "render_model_card",
    "solve",
    "write_model_card",
]
