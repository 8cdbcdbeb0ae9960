"""Prompts for reasoning models, with and without reasoning (R2A's prompt modes).

A reasoning model writes ``<think> reasoning </think> answer``. To measure what the reasoning
is worth, R2A compares answers written after the model's own reasoning with answers written
when the reasoning is skipped. The *mode* of a prompt says which::

    mode         the prompt ends with                                 the model writes
    "reasoning"  " <think>\\n"                                          reasoning </think> answer
    "empty"      " <think>\\n\\n</think>"                                 the answer only
    "finished"   " <think>\\nOkay, I think I have finished thinking.\\n</think>" the answer only

``"finished"`` is the one R2A's paper reports as "without reasoning"; ``"empty"`` is its
``empty``/``default`` option. In both, the reasoning segment of the resulting trace is the
fixed filler (10 tokens for the R1 distills with ``"finished"``, ``"\\n\\n"`` with ``"empty"``).

Templates
---------
``template="raw"`` builds ``question [instruction] <suffix>``, exactly R2A's string (R2A used
no chat template: the raw string went through ``tokenizer(prompt)``, which added BOS).
``template="chat"`` puts ``question [instruction]`` in one user turn of the tokenizer's chat
template (with the generation prompt), then appends the mode's block without the leading
space. If the template's generation prompt already opens ``<think>`` (the updated DeepSeek-R1
templates do), that opening is replaced by the mode's block, so it is never doubled.
``template="auto"`` (default) uses the chat template when the tokenizer has one, else raw.
**To reproduce R2A, pass ``template="raw"``** even for models that ship a chat template.

The instruction
---------------
``math_instruction=True`` appends R2A's MATH instruction (:data:`MATH_INSTRUCTION`, with its
leading space) to the question; ``instruction="..."`` appends any other text. R2A used it for
MATH-500 only.

Tokens
------
:func:`prompt_ids` tokenizes a prompt the way the collection does: without the tokenizer's
own special tokens, then with BOS prepended when the tokenizer has one and the text does not
already start with it (a chat template that writes BOS itself is not given a second one).
This is the rule of :meth:`Trace.from_text <reasoning_circuits.trace.Trace.from_text>`, and
gives R2A's ids for the R1 distills.
"""

from __future__ import annotations

from typing import Any, Literal

from reasoning_circuits._options import check_option

__all__ = [
    "FINISHED_THINKING",
    "MATH_INSTRUCTION",
    "PROMPT_MODES",
    "TEMPLATES",
    "PromptMode",
    "Template",
    "build_prompt",
    "prompt_ids",
    "resolve_template",
]

PromptMode = Literal["reasoning", "empty", "finished"]
"""``"reasoning"``: the model reasons; ``"empty"``/``"finished"``: the reasoning is skipped."""
PROMPT_MODES: tuple[PromptMode, ...] = ("reasoning", "empty", "finished")

Template = Literal["auto", "raw", "chat"]
TEMPLATES: tuple[Template, ...] = ("auto", "raw", "chat")

MATH_INSTRUCTION = " Please reason step by step, and put your final answer within \\boxed{}."
"""R2A's instruction for MATH-500 (leading space included), appended after the question."""

FINISHED_THINKING = "Okay, I think I have finished thinking."
"""The filler reasoning of the ``"finished"`` mode."""


def _block(mode: PromptMode, think_open: str, think_close: str) -> str:
    """The mode's block, without the leading space: ``<think>\\n...``."""
    if mode == "reasoning":
        return f"{think_open}\n"
    if mode == "empty":
        return f"{think_open}\n\n{think_close}"
    return f"{think_open}\n{FINISHED_THINKING}\n{think_close}"


def resolve_template(template: Template, tokenizer: Any = None) -> Literal["raw", "chat"]:
    """``"raw"`` or ``"chat"``: what ``template`` means for ``tokenizer``.

    ``"auto"`` is ``"chat"`` when ``tokenizer`` has a chat template, else ``"raw"``.
    ``"chat"`` without a tokenizer that has one raises ``ValueError``.
    """
    check_option(template, Template, "template")
    has_chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if template == "auto":
        return "chat" if has_chat else "raw"
    if template == "chat" and not has_chat:
        raise ValueError(
            "template='chat' needs a tokenizer with a chat template; this one has none "
            "(tokenizer.chat_template is empty). Use template='raw' (R2A's plain string)"
        )
    return template


def build_prompt(
    question: str,
    mode: PromptMode = "reasoning",
    *,
    tokenizer: Any = None,
    template: Template = "auto",
    math_instruction: bool = False,
    instruction: str | None = None,
    think_open: str = "<think>",
    think_close: str = "</think>",
) -> str:
    """The exact prompt text for ``question`` in ``mode`` (see the module docstring).

    Args:
        question: the problem text, without instruction.
        mode: ``"reasoning"``, ``"empty"`` or ``"finished"``.
        tokenizer: needed for ``template="chat"`` (and for ``"auto"`` to find a template).
        template: ``"auto"``, ``"raw"`` or ``"chat"``.
        math_instruction: append R2A's :data:`MATH_INSTRUCTION`.
        instruction: append this text instead (include its leading space).
        think_open, think_close: the model's delimiters.

    >>> build_prompt("What is 2+2?", "finished", template="raw")
    'What is 2+2? <think>\\nOkay, I think I have finished thinking.\\n</think>'
    """
    check_option(mode, PromptMode, "mode")
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if math_instruction and instruction is not None:
        raise ValueError("pass math_instruction=True or instruction='...', not both")
    if not think_open or not think_close:
        raise ValueError("think_open and think_close must be non-empty strings")
    user = question + (MATH_INSTRUCTION if math_instruction else instruction or "")
    block = _block(mode, think_open, think_close)
    if resolve_template(template, tokenizer) == "raw":
        return f"{user} {block}"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str):
        raise TypeError(
            f"tokenizer.apply_chat_template(tokenize=False) returned {type(rendered).__name__}, "
            "not a str; use template='raw'"
        )
    for opened in (f"{think_open}\n", think_open):
        if rendered.endswith(opened):  # the template already opens the reasoning
            rendered = rendered[: -len(opened)]
            break
    return rendered + block


def prompt_ids(prompt: str, tokenizer: Any, *, add_bos: bool | None = None) -> list[int]:
    """Token ids of ``prompt``: no automatic special tokens, then BOS if wanted.

    ``add_bos=None`` prepends the tokenizer's BOS when it has one and the ids do not already
    start with it; ``True`` requires a BOS token; ``False`` never adds one.
    """
    ids = [int(i) for i in tokenizer.encode(prompt, add_special_tokens=False)]
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos is True and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    if add_bos is not False and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, int(bos))
    if not ids:
        raise ValueError(
            "the prompt is empty and the tokenizer has no BOS: nothing to condition on"
        )
    return ids
