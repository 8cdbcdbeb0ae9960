"""Prompt builders: R2A's exact strings, the instruction switch, chat templates, BOS rule."""

from __future__ import annotations

import pytest

import reasoning_circuits as rc
from reasoning_circuits.organism import format_prompt, make_problems
from reasoning_circuits.prompts import (
    FINISHED_THINKING,
    MATH_INSTRUCTION,
    PROMPT_MODES,
    build_prompt,
    prompt_ids,
    resolve_template,
)

# R2A's strings, written out from the paper's collection script (spec §1), not from our code.
R2A_SUFFIX = {
    "reasoning": " <think>\n",
    "empty": " <think>\n\n</think>",
    "finished": " <think>\nOkay, I think I have finished thinking.\n</think>",
}
R2A_MATH = " Please reason step by step, and put your final answer within \\boxed{}."

# A DeepSeek-R1-like chat template: BOS written by the template, and (like the updated R1
# templates) the generation prompt already opens the reasoning.
R1_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
# A template whose generation prompt does not open the reasoning.
PLAIN_CHAT = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def chat_tokenizer(template: str):
    tok = rc.testing.bpe_tokenizer()  # a fresh object: the shared fixtures stay untouched
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_raw_prompts_are_r2as_strings(mode):
    question = "What is $1+1$?"
    assert build_prompt(question, mode, template="raw") == question + R2A_SUFFIX[mode]
    with_inst = build_prompt(question, mode, template="raw", math_instruction=True)
    assert with_inst == question + R2A_MATH + R2A_SUFFIX[mode]
    assert MATH_INSTRUCTION == R2A_MATH
    assert FINISHED_THINKING in R2A_SUFFIX["finished"]


def test_custom_instruction_and_refusals():
    assert build_prompt("Q?", template="raw", instruction=" Be brief.") == "Q? Be brief. <think>\n"
    with pytest.raises(ValueError, match="not both"):
        build_prompt("Q?", template="raw", math_instruction=True, instruction=" x")
    with pytest.raises(ValueError, match="did you mean 'finished'"):
        build_prompt("Q?", "finish", template="raw")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="template must be one of"):
        build_prompt("Q?", template="jinja")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="question must be a str"):
        build_prompt(3, template="raw")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_the_organisms_format_prompt_is_the_raw_template(mode):
    for problem in make_problems(5, seed=2):
        assert build_prompt(problem.question, mode, template="raw") == format_prompt(problem, mode)


def test_auto_uses_the_chat_template_only_when_there_is_one(tokenizer):
    assert tokenizer.chat_template is None
    assert resolve_template("auto", tokenizer) == "raw"
    assert resolve_template("auto", None) == "raw"
    assert build_prompt("Q?", tokenizer=tokenizer) == "Q? <think>\n"
    with pytest.raises(ValueError, match="has none"):
        build_prompt("Q?", tokenizer=tokenizer, template="chat")
    assert resolve_template("auto", chat_tokenizer(PLAIN_CHAT)) == "chat"


@pytest.mark.parametrize("mode", PROMPT_MODES)
def test_chat_template_never_doubles_the_think_opening(mode):
    tok = chat_tokenizer(R1_LIKE)
    prompt = build_prompt("Q?", mode, tokenizer=tok, math_instruction=True)
    block = R2A_SUFFIX[mode][1:]  # the chat form has no leading space
    assert prompt == f"<|endoftext|><|User|>Q?{R2A_MATH}<|Assistant|>{block}"
    assert prompt.count("<think>") == 1
    plain = build_prompt("Q?", mode, tokenizer=chat_tokenizer(PLAIN_CHAT))
    assert plain == f"[user]Q?[assistant]{block}"
    # template="raw" ignores the chat template (R2A's convention)
    assert build_prompt("Q?", mode, tokenizer=tok, template="raw") == "Q?" + R2A_SUFFIX[mode]


def test_prompt_ids_add_bos_once(tokenizer):
    bos = tokenizer.bos_token_id
    body = tokenizer.encode("Q? <think>\n", add_special_tokens=False)
    assert prompt_ids("Q? <think>\n", tokenizer) == [bos, *body]
    assert prompt_ids("Q? <think>\n", tokenizer, add_bos=False) == body
    # a chat template that writes BOS itself gets no second one
    chat = build_prompt("Q?", tokenizer=chat_tokenizer(R1_LIKE))
    ids = prompt_ids(chat, chat_tokenizer(R1_LIKE))
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1


def test_prompt_ids_match_the_tiny_reasoners_training_convention():
    from transformers import AutoTokenizer

    from reasoning_circuits.models import BUILTIN_MODELS

    tok = AutoTokenizer.from_pretrained(BUILTIN_MODELS["tiny-reasoner"])
    problem = make_problems(1, seed=0, split="heldout")[0]
    text = format_prompt(problem)
    # the organism's generate(): [BOS] + the prompt without special tokens
    expected = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False)]
    assert prompt_ids(build_prompt(problem.question, template="raw"), tok) == expected
