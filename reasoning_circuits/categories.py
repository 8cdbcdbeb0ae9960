"""Heuristic sentence categories and failure modes for reasoning traces.

Thought Anchors sorts reasoning sentences into eight functions: ``problem_setup``
(restating the question), ``plan_generation`` (deciding what to do), ``fact_retrieval``
(recalling a fact or formula), ``active_computation`` (doing arithmetic or algebra),
``uncertainty_management`` (hesitating, backtracking), ``result_consolidation`` (summing up
results), ``self_checking`` (verifying) and ``final_answer_emission`` (stating the answer).

The labels here come from **documented heuristic rules** (keywords, position in the trace,
and the arithmetic claims :func:`~reasoning_circuits.verification.verify_arithmetic`
finds). They are cheap and reproducible but are not ground truth: every label carries the
rule that produced it (``label.rule``) and ``label.heuristic`` is ``True``. For better labels,
pass ``classifier=``: any callable ``(sentence, context) -> category`` (an LLM prompt, a
trained model); its labels carry ``rule="classifier"`` and ``heuristic=False``.

Category rules, the first that fires wins (``rule`` names in brackets):

1. ``final_answer_emission``: ``\\boxed{``, ``####``, "final answer", "the answer is",
   "answer:" [``final_answer:keyword``].
2. ``self_checking``: check/verify/double-check/confirm/plug back/sanity, "let me
   re-calculate", "that matches", "makes sense" [``self_checking:keyword``].
3. ``uncertainty_management``: wait/hmm/maybe/perhaps/not sure/actually/alternatively/
   on second thought/"I think"/mistake, or a question mark [``uncertainty:keyword``,
   ``uncertainty:question``].
4. ``active_computation``: the sentence makes at least one arithmetic claim
   [``computation:claim``], or has a computing verb (add, multiply, subtract, divide,
   compute, calculate, simplify, solve) with a digit [``computation:verb``].
5. ``problem_setup``: the first sentence, when none of the rules above fired
   [``setup:first_sentence``].
6. ``result_consolidation``: opens with so/therefore/thus/hence/in total/altogether/overall/
   "that means"/"this gives" [``consolidation:connective``].
7. ``plan_generation``: first/next/then/"I need to"/"we need to"/"let me"/"let's"/"I'll"/
   "I should"/step/approach/plan/"to find" [``plan:keyword``].
8. ``fact_retrieval``: recall/remember/formula/"by definition"/"we know"/"there are N ... in
   a"/"is defined as" [``fact:keyword``].
9. ``problem_setup``: the second sentence, or every number in it appears in the
   question [``setup:position``, ``setup:restates_question``].
10. Otherwise ``plan_generation`` [``fallback``].

Failure modes (:func:`diagnose`), per sentence:

* ``computational_mistake`` (**verified**, ``heuristic=False``): only when
  :func:`verify_arithmetic` finds a wrong claim in the sentence; ``correction`` says what the
  value should be. A sentence that merely contains arithmetic never gets it.
* ``logical_error`` (heuristic): the sentence retracts something (wrong, incorrect,
  mistake, "that's not right", "doesn't make sense", contradiction).
* ``excessive_uncertainty`` (heuristic): two or more hedges (maybe, perhaps, possibly, might,
  "not sure", "I think", could be) in one sentence.
* ``missing_step`` (heuristic): a ``result_consolidation`` or ``final_answer_emission``
  sentence states a number that appears nowhere before (question and earlier sentences) and
  that it does not compute itself: a result with no visible derivation.
* ``None``: no rule fired.

The study (PTS) labels only anchors with a negative importance Δ and calls any sentence with
``a op b = c`` a computational mistake without checking it; here ``diagnose`` labels every
sentence, and ``only_negative=`` restricts the heuristic labels to sentences whose Δ < 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from reasoning_circuits.verification import ArithmeticClaim, verify_arithmetic

__all__ = [
    "CATEGORIES",
    "FAILURE_MODES",
    "Category",
    "FailureMode",
    "SentenceContext",
    "SentenceDiagnosis",
    "SentenceLabel",
    "TraceDiagnosis",
    "classify_sentence_heuristic",
    "classify_sentences",
    "diagnose",
]

Category = Literal[
    "problem_setup",
    "plan_generation",
    "fact_retrieval",
    "active_computation",
    "uncertainty_management",
    "result_consolidation",
    "self_checking",
    "final_answer_emission",
]
CATEGORIES: tuple[str, ...] = get_args(Category)
FailureMode = Literal[
    "computational_mistake", "logical_error", "excessive_uncertainty", "missing_step"
]
FAILURE_MODES: tuple[str, ...] = get_args(FailureMode)


@dataclass(frozen=True)
class SentenceContext:
    """What a classifier may look at besides the sentence itself.

    Attributes:
        index: 0-based position of the sentence in the reasoning.
        n_sentences: number of reasoning sentences.
        previous: the earlier sentences, stripped.
        question: the prompt text, if known (``None`` for plain lists of sentences).
        claims: the arithmetic claims of this sentence.
    """

    index: int
    n_sentences: int
    previous: tuple[str, ...] = ()
    question: str | None = None
    claims: tuple[ArithmeticClaim, ...] = ()


@dataclass(frozen=True)
class SentenceLabel:
    """A category and the rule that gave it (``"classifier"`` for a user classifier)."""

    category: Category
    rule: str
    heuristic: bool = True


Classifier = Callable[[str, SentenceContext], "Category | str | SentenceLabel"]


def _any(words: str) -> re.Pattern[str]:
    return re.compile(r"(?<![A-Za-z])(?:" + words + r")(?![A-Za-z])", re.IGNORECASE)


_FINAL = re.compile(
    r"\\boxed\{|####|final answer|the answer is|answer\s*:|answer should be", re.IGNORECASE
)
_CHECK = _any(
    r"check|checking|verify|verifying|double-check|double check|confirm|confirms|plug(?:ging)? "
    r"(?:it |this |that )?back|sanity|re-?calculate|re-?compute|that matches|makes sense|"
    r"let me see if"
)
_UNCERTAIN = _any(
    r"wait|hmm+|maybe|perhaps|not sure|actually|alternatively|on second thought|i think|"
    r"mistake|possibly|might|i'm confused|confusing|hold on"
)
_COMPUTE_VERB = _any(
    r"add|adding|multiply|multiplying|subtract|subtracting|divide|dividing|compute|"
    r"computing|calculate|calculating|simplify|simplifying|solve|solving|sum of|product of"
)
_CONSOLIDATE = re.compile(
    r"^\W*(?:so|therefore|thus|hence|in total|altogether|overall|that means|this means|"
    r"this gives|which gives|putting (?:it|this) together|in summary)(?![A-Za-z])",
    re.IGNORECASE,
)
_PLAN = _any(
    r"first|next|then|i need to|we need to|let me|let's|let us|i'll|i will|i should|we should|"
    r"step|approach|plan|to find|strategy|start by"
)
_FACT = _any(
    r"recall|remember|formula|by definition|we know|it is known|is defined as|"
    r"there are \d+ [a-z]+ in (?:a|an|one)"
)
_NUMBER = re.compile(r"(?<![\d.])\d+(?:,\d{3})*(?:\.\d+)?")

_RETRACT = _any(
    r"wrong|incorrect|mistake|that's not right|that is not right|doesn't make sense|"
    r"does not make sense|contradiction|contradicts|that can't be"
)
_HEDGE = _any(r"maybe|perhaps|possibly|might|not sure|i think|could be|i guess|probably")


def _numbers(text: str) -> set[str]:
    return {m.group().replace(",", "") for m in _NUMBER.finditer(text)}


def classify_sentence_heuristic(sentence: str, context: SentenceContext) -> SentenceLabel:
    """The heuristic category of one sentence (rules in the module docstring)."""
    text = sentence.strip()
    if _FINAL.search(text):
        return SentenceLabel("final_answer_emission", "final_answer:keyword")
    if _CHECK.search(text):
        return SentenceLabel("self_checking", "self_checking:keyword")
    if _UNCERTAIN.search(text):
        return SentenceLabel("uncertainty_management", "uncertainty:keyword")
    if text.endswith("?"):
        return SentenceLabel("uncertainty_management", "uncertainty:question")
    if context.claims:
        return SentenceLabel("active_computation", "computation:claim")
    if _COMPUTE_VERB.search(text) and re.search(r"\d", text):
        return SentenceLabel("active_computation", "computation:verb")
    if context.index == 0:
        return SentenceLabel("problem_setup", "setup:first_sentence")
    if _CONSOLIDATE.search(text):
        return SentenceLabel("result_consolidation", "consolidation:connective")
    if _PLAN.search(text):
        return SentenceLabel("plan_generation", "plan:keyword")
    if _FACT.search(text):
        return SentenceLabel("fact_retrieval", "fact:keyword")
    if context.index < 2:
        return SentenceLabel("problem_setup", "setup:position")
    nums = _numbers(text)
    if nums and context.question is not None and nums <= _numbers(context.question):
        return SentenceLabel("problem_setup", "setup:restates_question")
    return SentenceLabel("plan_generation", "fallback")


def _sentences_of(source: Any) -> tuple[list[str], list[tuple[int, int]], str | None]:
    """Sentences, their character spans and the question of a Trace, a str or a list."""
    from reasoning_circuits.sentences import split_sentences
    from reasoning_circuits.trace import Trace

    if isinstance(source, Trace):
        texts = [source.text_of(s) for s in source.sentences]
        spans = [(s.char_start, s.char_stop) for s in source.sentences]
        return texts, spans, source.text_of("prompt")
    if isinstance(source, str):
        spans = split_sentences(source)
        return [source[a:b] for a, b in spans], spans, None
    if isinstance(source, Sequence) and all(isinstance(s, str) for s in source):
        texts = list(source)
        spans, pos = [], 0
        for t in texts:
            spans.append((pos, pos + len(t)))
            pos += len(t)
        return texts, spans, None
    raise TypeError(
        f"expected a Trace, a str or a sequence of str sentences, got {type(source).__name__}"
    )


def _contexts(
    texts: Sequence[str], question: str | None, modulus: int | None
) -> list[SentenceContext]:
    stripped = [t.strip() for t in texts]
    return [
        SentenceContext(
            index=i,
            n_sentences=len(texts),
            previous=tuple(stripped[:i]),
            question=question,
            claims=tuple(verify_arithmetic(t, modulus=modulus)),
        )
        for i, t in enumerate(texts)
    ]


def _apply_classifier(classifier: Classifier, text: str, ctx: SentenceContext) -> SentenceLabel:
    out = classifier(text.strip(), ctx)
    if isinstance(out, SentenceLabel):
        return out
    if out not in CATEGORIES:
        raise ValueError(
            f"the classifier returned {out!r} for sentence {ctx.index}; it must return one of "
            f"{', '.join(CATEGORIES)} or a SentenceLabel"
        )
    return SentenceLabel(out, "classifier", heuristic=False)  # type: ignore[arg-type]


def classify_sentences(
    source: Any,
    *,
    classifier: Classifier | None = None,
    question: str | None = None,
    modulus: int | None = None,
) -> list[SentenceLabel]:
    """One :class:`SentenceLabel` per reasoning sentence.

    Args:
        source: a :class:`~reasoning_circuits.Trace` (its reasoning sentences; the prompt is
            the question), a str (split with
            :func:`~reasoning_circuits.sentences.split_sentences`) or a list of sentences.
        classifier: ``(sentence, context) -> category`` replacing the heuristic rules.
        question: the question text when ``source`` is not a Trace.
        modulus: passed to :func:`verify_arithmetic` (e.g. 10 for the tiny reasoner).

    Raises:
        TypeError: ``source`` is of another type.
        ValueError: the classifier returned something that is not a category.
    """
    texts, _, q = _sentences_of(source)
    contexts = _contexts(texts, question if question is not None else q, modulus)
    if classifier is None:
        return [classify_sentence_heuristic(t, c) for t, c in zip(texts, contexts)]
    return [_apply_classifier(classifier, t, c) for t, c in zip(texts, contexts)]


@dataclass(frozen=True)
class SentenceDiagnosis:
    """Category, arithmetic claims and failure mode of one reasoning sentence.

    ``failure_heuristic`` is ``False`` only for ``computational_mistake``, which comes from a
    verified wrong claim; ``correction`` is then ``"<expression> should be <value>"``.
    """

    index: int
    text: str
    span: tuple[int, int]
    label: SentenceLabel
    claims: tuple[ArithmeticClaim, ...]
    failure_mode: FailureMode | None
    failure_rule: str | None
    failure_heuristic: bool
    correction: str | None

    @property
    def category(self) -> Category:
        return self.label.category

    @property
    def n_wrong(self) -> int:
        """Number of wrong arithmetic claims."""
        return sum(not c.ok for c in self.claims)


@dataclass(frozen=True)
class TraceDiagnosis:
    """Per-sentence diagnoses of one trace; ``to_frame()`` gives one row per sentence."""

    sentences: tuple[SentenceDiagnosis, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> SentenceDiagnosis:
        return self.sentences[i]

    @property
    def wrong_claims(self) -> list[ArithmeticClaim]:
        """Every wrong arithmetic claim, in order."""
        return [c for s in self.sentences for c in s.claims if not c.ok]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "index": s.index,
                    "text": s.text,
                    "char_start": s.span[0],
                    "char_stop": s.span[1],
                    "category": s.label.category,
                    "category_rule": s.label.rule,
                    "category_heuristic": s.label.heuristic,
                    "n_claims": len(s.claims),
                    "n_wrong": s.n_wrong,
                    "failure_mode": s.failure_mode,
                    "failure_rule": s.failure_rule,
                    "failure_heuristic": s.failure_heuristic,
                    "correction": s.correction,
                }
                for s in self.sentences
            ]
        )


def _failure(
    text: str, label: SentenceLabel, ctx: SentenceContext, heuristic_allowed: bool
) -> tuple[FailureMode | None, str | None, bool, str | None]:
    wrong = [c for c in ctx.claims if not c.ok]
    if wrong:
        correction = "; ".join(f"{c.expression} should be {c.correct_text}" for c in wrong)
        return "computational_mistake", "verified:wrong_claim", False, correction
    if not heuristic_allowed:
        return None, None, True, None
    if _RETRACT.search(text):
        return "logical_error", "heuristic:retraction", True, None
    if len(_HEDGE.findall(text)) >= 2:
        return "excessive_uncertainty", "heuristic:hedges", True, None
    if label.category in ("result_consolidation", "final_answer_emission"):
        seen = _numbers((ctx.question or "") + " " + " ".join(ctx.previous))
        computed = {
            str(c.correct_value) for c in ctx.claims if not isinstance(c.correct_value, str)
        }
        unsupported = _numbers(text) - seen - computed
        if unsupported:
            return "missing_step", "heuristic:unsupported_number", True, None
    return None, None, True, None


def diagnose(
    source: Any,
    *,
    classifier: Classifier | None = None,
    question: str | None = None,
    modulus: int | None = None,
    deltas: Sequence[float] | None = None,
    only_negative: bool = False,
) -> TraceDiagnosis:
    """Categories, arithmetic claims and failure modes for every reasoning sentence.

    Args:
        source: a Trace, a str or a list of sentences (see :func:`classify_sentences`).
        classifier: optional user classifier for the categories.
        question: the question text when ``source`` is not a Trace.
        modulus: passed to :func:`verify_arithmetic`.
        deltas: one importance Δ per sentence (e.g. resampling importance), needed by
            ``only_negative``.
        only_negative: give heuristic failure modes only to sentences with Δ < 0 (the
            study's convention). ``computational_mistake`` is given whatever Δ is.

    Raises:
        ValueError: ``only_negative`` without ``deltas``, or ``deltas`` of the wrong length.
    """
    texts, spans, q = _sentences_of(source)
    if only_negative and deltas is None:
        raise ValueError("only_negative=True needs deltas=, one importance value per sentence")
    if deltas is not None and len(deltas) != len(texts):
        raise ValueError(f"deltas has {len(deltas)} values but there are {len(texts)} sentences")
    contexts = _contexts(texts, question if question is not None else q, modulus)
    out = []
    for i, (text, span, ctx) in enumerate(zip(texts, spans, contexts)):
        if classifier is None:
            label = classify_sentence_heuristic(text, ctx)
        else:
            label = _apply_classifier(classifier, text, ctx)
        allowed = not only_negative or (deltas is not None and deltas[i] < 0)
        mode, rule, heuristic, correction = _failure(text, label, ctx, allowed)
        out.append(
            SentenceDiagnosis(
                i, text.strip(), span, label, ctx.claims, mode, rule, heuristic, correction
            )
        )
    return TraceDiagnosis(tuple(out))
