"""The tiny reasoner's task: multi-hop variable bindings with arithmetic mod 10.

A problem states some values (distractors first, then the one that starts the chain) and the
rules of a chain of 2–4 hops, and asks for the chain's last variable::

    g=6. b=8. c=b*3. m=c+4. What is m?

The reasoning computes the chain step by step, writing every step out so that each one is
easy to learn, with an occasional filler sentence::

    c=b*3=8*3=4. Let me check. m=c+4=4+4=8.

and the answer restates the result: ``The answer is 8.`` Each step copies the next rule from
the question, reads one value (the previous step's result, or for the first step the last
fact) and applies one small table; the answer copies the last result
from the reasoning. Without reasoning the model would have to follow all the hops inside one
forward pass. Arithmetic is mod 10 (``8*3=4``).

Design history (measured, 4-layer model, d_model 128): with distractor *rules* as well, the
first step was ambiguous (every starting value had a rule reading it) and a model stayed at
15% held-out accuracy; evaluating every rule in the question's order removed the ambiguity
but each step then had to look its value up by name among facts, rules and earlier steps,
and a model stalled at 18% after 2500 steps. With the chain's rules only and the start fact
anywhere among the facts, every error at step 2000 (81 of 200 held-out problems) was the first
step reading the wrong fact: telling facts apart by name stayed near chance (≈60% vs ≈40%)
while the arithmetic, the rule copying and the answer were already perfect. So the start fact
now comes last.

Wrong steps (``error_rate``, used in training): a step may state a wrong result, which the
later steps read and the answer restates. The answer then has to read the reasoning (it
cannot be recomputed from the question), and a model sampled at temperature 1 writes a wrong
step now and then, so replacing a computing step changes the outcome: the counterfactual
that thought anchors measure (:mod:`reasoning_circuits.anchors`). Without such errors a
sampled step is either the right one or a filler after which the model writes the right one,
and no computing sentence matters under resampling. Greedy decoding still writes the right
result almost always (it is the most frequent target; held-out accuracy in the model card).

Skipped steps (``skip_rate``, used in training): a step before the last may be left
unwritten, and the next step restates the value it would have given. Training reads such
reasoning (the answer still restates the last step) but never learns to write the step after
the gap (:attr:`Problem.read_only`): the model then answers from the last step when an earlier
one is deleted (removal importance), while it still writes every step itself. Measured: when
the step after a gap was learned too, greedy held-out accuracy fell to 0.93 and every failure
was a 4-hop chain whose step copied the next rule's operation or jumped a rule.

Problems are split into ``"train"`` and ``"heldout"`` by a hash of the question text, so the
two splits never share a problem whatever the seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FILLERS",
    "PROMPT_MODES",
    "Problem",
    "PromptMode",
    "format_completion",
    "format_prompt",
    "make_problems",
    "solve",
]

Split = Literal["train", "heldout"]
PromptMode = Literal["reasoning", "finished", "empty"]
PROMPT_MODES: tuple[PromptMode, ...] = ("reasoning", "finished", "empty")
FILLERS = ("Let me check.", "Okay.", "Next step.")
FINISHED = "Okay, I think I have finished thinking."
_OPS = ("+", "-", "*")
_LETTERS = "abcdefghjkmnpqrstuvwxyz"  # no i, l, o: easy to confuse in print


@dataclass(frozen=True)
class Problem:
    """One problem: the question, the reference reasoning and the gold answer sentence."""

    question: str
    reasoning: str
    gold: str
    value: int
    hops: int
    read_only: tuple[tuple[int, int], ...] = ()
    """Character spans ``[start, end)`` of ``reasoning`` that training reads but does not
    learn to write: each step that follows a skipped one (see :func:`make_problems`)."""

    @property
    def split(self) -> Split:
        return _split_of(self.question)


def _split_of(question: str) -> Split:
    digest = hashlib.sha256(question.encode()).digest()
    return "heldout" if digest[0] % 10 == 0 else "train"


def _apply(op: str, a: int, k: int) -> int:
    if op == "+":
        return (a + k) % 10
    if op == "-":
        return (a - k) % 10
    return (a * k) % 10


def _sample(
    rng: random.Random, filler_rate: float, error_rate: float, first_filler: bool, skip_rate: float
) -> Problem:
    hops = rng.randint(2, 4)
    n_distract = rng.randint(1, 2)
    names = rng.sample(_LETTERS, 1 + hops + n_distract)
    start, chain, distractors = names[0], names[1 : 1 + hops], names[1 + hops :]
    values = {name: rng.randint(0, 9) for name in [start, *distractors]}
    facts = [f"{name}={values[name]}." for name in [*distractors, start]]
    rules, steps = [], []
    previous = start
    stated = dict(values)  # what the reasoning writes; differs from the truth after an error
    for name in chain:
        op, k = rng.choice(_OPS), rng.randint(1, 9)
        values[name] = _apply(op, values[previous], k)
        stated[name] = _apply(op, stated[previous], k)
        if error_rate and rng.random() < error_rate:  # no draw at all when error_rate is 0
            stated[name] = rng.choice([d for d in range(10) if d != stated[name]])
        rules.append(f"{name}={previous}{op}{k}.")
        steps.append(f"{name}={previous}{op}{k}={stated[previous]}{op}{k}={stated[name]}.")
        previous = name
    question = " ".join(facts + rules) + f" What is {chain[-1]}?"
    sentences: list[str] = []
    after_gap: set[int] = set()  # indices in `sentences` of steps that follow a skipped step
    skipped = False
    for i, step in enumerate(steps):
        if skip_rate and i + 1 < len(steps) and rng.random() < skip_rate:
            skipped = True  # a step left unwritten (never the last): the next one restates it
            continue
        if (i or first_filler) and rng.random() < filler_rate:
            sentences.append(rng.choice(FILLERS))
        if skipped:
            after_gap.add(len(sentences))
            skipped = False
        sentences.append(step)
    spans, offset = [], 0
    for j, sentence in enumerate(sentences):
        if j in after_gap:
            spans.append((offset, offset + len(sentence)))
        offset += len(sentence) + 1
    value = stated[chain[-1]]  # the answer follows the reasoning, right or wrong
    gold = f"The answer is {value}."
    return Problem(question, " ".join(sentences), gold, value, hops, tuple(spans))


_FACT = re.compile(r"\b([a-z])=(\d)\.")
_RULE = re.compile(r"\b([a-z])=([a-z])([+*-])(\d)\.")
_TARGET = re.compile(r"What is ([a-z])\?$")


def solve(question: str) -> Problem:
    """The reference reasoning (without filler) and answer of a question in this task's form.

    Use it for counterfactual problems: edit a value in ``problem.question`` and solve again.
    Raises ``ValueError`` if the question is not in the task's form.
    """
    target = _TARGET.search(question)
    if target is None:
        raise ValueError(f"no 'What is x?' at the end of {question!r}")
    values = {name: int(value) for name, value in _FACT.findall(question)}
    steps, sources = [], {}
    for name, source, op, k in _RULE.findall(question):
        if source not in values:
            raise ValueError(f"rule {name}={source}{op}{k} reads {source!r} before it is defined")
        values[name] = _apply(op, values[source], int(k))
        sources[name] = source
        steps.append(f"{name}={source}{op}{k}={values[source]}{op}{k}={values[name]}.")
    name = target[1]
    if name not in values:
        raise ValueError(f"the question asks for {name!r}, which no rule defines")
    hops, current = 0, name
    while current in sources:
        hops, current = hops + 1, sources[current]
    value = values[name]
    return Problem(question, " ".join(steps), f"The answer is {value}.", value, hops)


def make_problems(
    n: int,
    *,
    seed: int,
    split: Split = "train",
    filler_rate: float = 0.1,
    error_rate: float = 0.0,
    first_filler: bool = False,
    skip_rate: float = 0.0,
) -> list[Problem]:
    """``n`` fresh problems of one split, reproducible from ``seed``.

    ``filler_rate`` is the chance of a filler sentence before each step after the first (before
    every step, the first included, with ``first_filler=True``). ``error_rate`` is the chance
    that a step states a wrong result (another digit, uniformly); later steps read the stated
    value and the answer restates the last one, so ``value`` and ``gold`` follow the reasoning
    and differ from the true result when a step is wrong. ``skip_rate`` is the chance that a
    step before the last is not written (the next step still restates its value); the step
    after such a gap is listed in ``Problem.read_only``, so that training teaches the model to
    read reasoning with a gap (removal importance deletes a step) but never to write one.
    Training uses errors and skips so that the answer reads the last step (see the module
    docstring); evaluation problems have neither.
    With the defaults the problems are those of earlier versions for the same seed.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rates = (("filler_rate", filler_rate), ("error_rate", error_rate), ("skip_rate", skip_rate))
    for name, rate in rates:
        if not 0 <= rate <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    rng = random.Random(f"{seed}-{split}")
    out: list[Problem] = []
    while len(out) < n:
        problem = _sample(rng, filler_rate, error_rate, first_filler, skip_rate)
        if problem.split == split:
            out.append(problem)
    return out


def format_prompt(problem: Problem, mode: PromptMode = "reasoning") -> str:
    """The text the model is prompted with, in the R2A template.

    ``"reasoning"``: ``question <think>\\n``; ``"finished"``: the reasoning replaced by
    ``Okay, I think I have finished thinking.``; ``"empty"``: an empty reasoning.
    """
    if mode == "reasoning":
        return f"{problem.question} <think>\n"
    if mode == "finished":
        return f"{problem.question} <think>\n{FINISHED}\n</think>"
    if mode == "empty":
        return f"{problem.question} <think>\n\n</think>"
    raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")


def format_completion(problem: Problem, mode: PromptMode = "reasoning") -> str:
    """What the model should write after :func:`format_prompt` (without the EOS token)."""
    if mode == "reasoning":
        return f"{problem.reasoning}\n</think> {problem.gold}"
    return f" {problem.gold}"
