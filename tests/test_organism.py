import re

import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.organism import format_completion, format_prompt, make_problems
from reasoning_circuits.organism.train import _encode_batch, build_tokenizer


def test_problems_are_reproducible_fresh_and_splits_disjoint():
    a = make_problems(50, seed=3)
    assert a == make_problems(50, seed=3)
    assert a != make_problems(50, seed=4)
    train = {p.question for p in make_problems(2000, seed=1)}
    heldout = {p.question for p in make_problems(300, seed=1, split="heldout")}
    assert not train & heldout
    assert all(p.split == "heldout" for p in make_problems(20, seed=9, split="heldout"))
    with pytest.raises(ValueError, match="split must be"):
        make_problems(1, seed=0, split="test")  # type: ignore[arg-type]


def test_every_written_step_is_right_and_the_answer_is_the_asked_value():
    ops = {
        "+": lambda a, k: (a + k) % 10,
        "-": lambda a, k: (a - k) % 10,
        "*": lambda a, k: a * k % 10,
    }
    for p in make_problems(300, seed=5):
        values = {m[0]: int(m[1]) for m in re.findall(r"\b([a-z])=(\d)\.", p.question)}
        rules = re.findall(r"\b([a-z])=([a-z])([+*-])(\d)\.", p.question)
        steps = re.findall(r"([a-z])=([a-z])([+*-])(\d)=(\d)[+*-]\d=(\d)\.", p.reasoning)
        assert [s[:4] for s in steps] == rules  # every rule, in the question's order
        assert 2 <= p.hops == len(rules) <= 4
        assert len(values) >= 2  # at least one distractor fact
        for name, source, op, k, shown, result in steps:
            assert int(shown) == values[source]  # the step reads the right value
            values[name] = ops[op](values[source], int(k))
            assert int(result) == values[name]
        target = re.search(r"What is ([a-z])\?$", p.question)[1]
        assert p.gold == f"The answer is {values[target]}." == f"The answer is {p.value}."
    fillers = sum(
        any(f in p.reasoning for f in rc.organism.FILLERS) for p in make_problems(300, seed=5)
    )
    assert 0 < fillers < 150  # present but rare


def test_prompt_modes_follow_the_r2a_template():
    p = make_problems(1, seed=0)[0]
    assert format_prompt(p, "reasoning") == f"{p.question} <think>\n"
    assert format_prompt(p, "finished").endswith(
        "<think>\nOkay, I think I have finished thinking.\n</think>"
    )
    assert format_prompt(p, "empty") == f"{p.question} <think>\n\n</think>"
    assert format_completion(p) == f"{p.reasoning}\n</think> {p.gold}"
    with pytest.raises(ValueError, match="mode must be"):
        format_prompt(p, "none")  # type: ignore[arg-type]


def test_tokenizer_is_character_level_with_think_tokens():
    tok = build_tokenizer()
    p = make_problems(1, seed=0)[0]
    text = format_prompt(p) + format_completion(p)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) == len(text) - len("<think>") + 1 - len("</think>") + 1
    trace = rc.Trace.from_ids([tok.bos_token_id, *ids, tok.eos_token_id], tok)
    assert trace.text_of("answer").strip() == p.gold
    assert trace.text_of("reasoning") == "\n" + p.reasoning + "\n"


def test_wrong_steps_are_followed_by_the_later_steps_and_the_answer():
    """With error_rate, a step may state a wrong result; the reasoning stays consistent with
    what it states (the next step reads the stated value, the answer restates the last), and
    the arithmetic check finds exactly the wrong steps."""
    problems = make_problems(300, seed=6, error_rate=0.3, first_filler=True, filler_rate=0.2)
    n_wrong = n_steps = n_first_filler = 0
    for p in problems:
        steps = re.findall(r"([a-z])=([a-z])([+*-])(\d)=(\d)([+*-])(\d)=(\d)\.", p.reasoning)
        stated = {m[0]: int(m[1]) for m in re.findall(r"\b([a-z])=(\d)\.", p.question)}
        for name, source, op, k, shown, _, _, result in steps:
            assert int(shown) == stated[source]  # reads what was stated, right or wrong
            stated[name] = int(result)
            claims = rc.verify_arithmetic(f"{shown}{op}{k}={result}", modulus=10)
            right = int(result) == {"+": int(shown) + int(k), "-": int(shown) - int(k),
                                    "*": int(shown) * int(k)}[op] % 10  # fmt: skip
            assert [c.ok for c in claims] == [right]
            n_wrong += not right
            n_steps += 1
        assert p.gold == f"The answer is {stated[steps[-1][0]]}." == f"The answer is {p.value}."
        n_first_filler += any(p.reasoning.startswith(f) for f in rc.organism.FILLERS)
    assert 0.25 < n_wrong / n_steps < 0.35  # the rate asked for
    assert n_first_filler > 20  # fillers before the first step too
    truths = [rc.organism.solve(p.question).value for p in problems]
    assert sum(t != p.value for t, p in zip(truths, problems, strict=True)) > 100
    with pytest.raises(ValueError, match="error_rate"):
        make_problems(1, seed=0, error_rate=1.5)


def test_skipped_steps_are_restated_and_only_read_in_training():
    """With skip_rate a step before the last may be unwritten: the next step restates its
    value, never the last step is skipped, and exactly the steps after a gap are read-only,
    which the training loss mask leaves out (and nothing else of the reasoning)."""
    problems = make_problems(300, seed=8, skip_rate=0.3, filler_rate=0.2, first_filler=True)
    n_gaps = 0
    tok = build_tokenizer()
    for p in problems:
        truth = rc.organism.solve(p.question)
        rules = re.findall(r"\b([a-z])=([a-z])[+*-]\d\.", p.question)
        pattern = r"([a-z])=([a-z])[+*-]\d=\d[+*-]\d=\d\."
        written = [m for m in re.finditer(pattern, p.reasoning)]
        assert written[-1][1] == rules[-1][0]  # the last step is always written
        assert {m[0] for m in written} <= set(truth.reasoning.split(" "))  # right, restated
        previous = rules[0][1]  # the start fact
        expected = []
        for m in written:
            if m[2] != previous:  # reads a value no written sentence gave: a gap before it
                expected.append((m.start(), m.end()))
            previous = m[1]
        assert list(p.read_only) == expected
        n_gaps += len(expected)
        _, _, loss_mask = _encode_batch(tok, [p], ["reasoning"])
        ids = tok.encode(format_prompt(p) + format_completion(p), add_special_tokens=False)
        n_prompt = 1 + len(tok.encode(format_prompt(p), add_special_tokens=False))
        off = [i - n_prompt for i in range(len(ids) + 1) if not loss_mask[0, i] and i >= n_prompt]
        assert off == [i for a, b in expected for i in range(a, b)]  # char-level tokenizer
    assert 50 < n_gaps < 250
    gapped = next(p for p in problems if p.read_only)
    for mode in ("finished", "empty"):  # no reasoning is written: the whole completion is learned
        _, _, loss_mask = _encode_batch(tok, [gapped], [mode])
        n_prompt = 1 + len(tok.encode(format_prompt(gapped, mode), add_special_tokens=False))
        n_completion = 1 + len(
            tok.encode(format_completion(gapped, mode), add_special_tokens=False)
        )
        assert loss_mask[0].tolist() == [False] * n_prompt + [True] * n_completion
    assert make_problems(30, seed=8) == make_problems(30, seed=8, skip_rate=0.0)
    assert all(not p.read_only for p in make_problems(30, seed=8))


# the first 16 hex digits of that digest, computed with the code before error_rate existed (713a474)
DIGEST_2027 = "0ddf77daac646654"


def test_without_errors_the_problems_are_those_of_earlier_versions():
    """error_rate=0 draws nothing more: the same seed gives the same problems as before."""
    import hashlib
    import json

    problems = make_problems(40, seed=2027, split="heldout", filler_rate=0.3)
    digest = hashlib.sha256(json.dumps([(p.question, p.reasoning) for p in problems]).encode())
    assert digest.hexdigest()[:16] == DIGEST_2027


def test_training_runs_and_saves_a_loadable_model(tmp_path):
    from reasoning_circuits.organism.train import train

    record = train(tmp_path / "m", steps=2, seed=0, batch_size=4, eval_every=100, n_eval=4)
    assert record["steps"] == 2 and len(record["history"]) == 1
    model = rc.load_model(tmp_path / "m")
    assert model.cfg.n_layers == 4 and not model.training


def test_training_can_start_from_a_shipped_model(tmp_path):
    """init_from fine-tunes: with a zero learning rate the weights stay the source's."""
    from transformers import AutoModelForCausalLM

    from reasoning_circuits.models import BUILTIN_MODELS
    from reasoning_circuits.organism.train import train

    record = train(
        tmp_path / "ft", steps=1, seed=0, batch_size=2, lr=0.0, eval_every=100, n_eval=2,
        init_from="tiny-reasoner", error_rate=0.3,
    )  # fmt: skip
    assert record["init_from"] == "tiny-reasoner" and record["error_rate"] == 0.3
    assert record["architecture"]["n_layer"] == 4
    source = AutoModelForCausalLM.from_pretrained(BUILTIN_MODELS["tiny-reasoner"])
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "ft")
    for (name, a), b in zip(source.named_parameters(), tuned.parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="architecture"):
        shape = {"n_layer": 1}
        train(tmp_path / "x", steps=1, seed=0, init_from="tiny-reasoner", architecture=shape)


def test_solve_reproduces_generated_problems_and_makes_counterfactuals():
    for p in make_problems(100, seed=8, filler_rate=0.0):
        assert rc.organism.solve(p.question) == p
    p = make_problems(1, seed=2)[0]
    name, value = p.question.split(".")[0].split("=")
    other = rc.organism.solve(
        p.question.replace(f"{name}={value}.", f"{name}={(int(value) + 1) % 10}.", 1)
    )
    assert len(other.reasoning) == len(rc.organism.solve(p.question).reasoning)
    with pytest.raises(ValueError, match="What is"):
        rc.organism.solve("a=1.")


def test_training_is_deterministic_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    from reasoning_circuits.organism.train import train

    for name in ("a", "b"):
        train(tmp_path / name, steps=3, seed=7, batch_size=4, eval_every=100, n_eval=2)
    first = load_file(tmp_path / "a" / "model.safetensors")
    second = load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)


def test_tokenizer_adds_bos_itself_exactly_once():
    """As in training: BOS first, then the text; the library's explicit path gives the same."""
    tok = build_tokenizer()
    p = make_problems(1, seed=0)[0]
    text = format_prompt(p)
    plain = tok(text)["input_ids"]
    explicit = [tok.bos_token_id, *tok.encode(text, add_special_tokens=False)]
    assert plain == explicit
    assert plain.count(tok.bos_token_id) == 1  # <|endoftext|> appears nowhere in the text
    # a trace built from text by the library starts with exactly one BOS as well
    trace = rc.Trace.from_text(text + p.reasoning + "\n</think> " + p.gold, tok)
    assert trace.tokens[0].tolist().count(tok.bos_token_id) == 1
    assert len(trace["bos"]) == 1


def test_training_saves_the_tokenizer_that_ships(tmp_path):
    """build_tokenizer, saved, is byte for byte the shipped tokenizer: retraining reproduces it."""
    from reasoning_circuits.models import BUILTIN_MODELS

    build_tokenizer().save_pretrained(tmp_path)
    shipped = BUILTIN_MODELS["tiny-reasoner"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), name


def test_forced_traces_refuse_unfinished_reasoning():
    tok = build_tokenizer()
    p = make_problems(1, seed=0)[0]
    ids = (tok.bos_token_id, *tok.encode(format_prompt(p) + "a=1.", add_special_tokens=False))
    unfinished = rc.organism.Generated(p, ids, "a=1.", correct=False, finished=False)
    with pytest.raises(ValueError, match="no </think>"):
        rc.organism.forced_traces(tok, [unfinished])


def test_accuracy_of_no_problems_is_refused():
    with pytest.raises(ValueError, match="at least one problem"):
        rc.organism.accuracy(None, [])


def test_evaluate_cli_measures_and_writes_the_card(tmp_path, capsys):
    """The command wires measure and the card together (few problems: a smoke test)."""
    import json
    import shutil

    from reasoning_circuits.models import BUILTIN_MODELS
    from reasoning_circuits.organism.evaluate import main

    directory = tmp_path / "tiny"
    shutil.copytree(BUILTIN_MODELS["tiny-reasoner"], directory)
    main(["--model", str(directory), "--n", "4", "--draws", "2", "--write-card"])
    printed = capsys.readouterr().out
    results = json.loads((directory / "evaluation.json").read_text())
    assert results["n_problems"] == 4 and f"wrote {directory / 'MODEL_CARD.md'}" in printed
    assert 0 <= results["with_reasoning"]["value"]["estimate"] <= 1
    assert len(results["ablation_single_heads"]) == 32 and results["random3"]["draws"] == 2
    card = (directory / "MODEL_CARD.md").read_text()
    assert "--n 4 --draws 2" in card and "A 859,264-parameter GPT-2" in card
    training = json.loads((directory / "training.json").read_text())
    # a directory that is no built-in model: the card names it after the directory
    assert card == rc.organism.render_model_card(training, results, name="tiny")
    assert 'rc.load_model("tiny")' in card
    with pytest.raises(SystemExit):  # b's card is hand-written: never overwritten
        main(["--model", "tiny-reasoner-b", "--n", "2", "--write-card"])
    assert "card is written by hand" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The answer is 7.", (True, True)),
        (" The answer is 7. ", (True, True)),  # surrounding space is not the template's
        ("The answer is 3.", (False, True)),  # right template, wrong value
        ("The answer: 7.", (True, False)),  # right value, broken template
        ("The answer is 7", (True, False)),
        ("The answer is 77.", (False, True)),
        ("", (False, False)),
    ],
)
def test_judge_answer_separates_value_and_template(answer, expected):
    assert rc.organism.judge_answer(answer, "The answer is 7.") == expected


def test_gold_value_refuses_what_is_not_a_gold_sentence():
    assert rc.organism.gold_value("The answer is 4.") == "4"
    with pytest.raises(ValueError, match="not an organism gold answer"):
        rc.organism.gold_value("4")
