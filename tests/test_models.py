import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import reasoning_circuits as rc
from reasoning_circuits import ModelLoadError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny GPT-2 saved as a Hugging Face format directory, as a hub download would be."""
    path = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_load_local_directory_in_eval_mode(model_dir, tokenizer):
    model = rc.load_model(model_dir)
    assert not model.training
    assert model.cfg.n_layers == 2 and model.cfg.n_heads == 2
    trace = rc.Trace.from_parts("Q", "\nr.\n", " a", tokenizer)
    profile = rc.AttentionProfile.compute(model, trace)
    assert np.isfinite(profile.masses[:, :, 5]).all()


def test_dtype_by_name(model_dir):
    model = rc.load_model(model_dir, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        rc.load_model(model_dir, dtype="float8")


def test_directory_missing_files_names_them(model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match=r"missing model\.safetensors.*tokenizer\.json"):
        rc.load_model(broken)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no directory"):
        rc.load_model(str(tmp_path / "nope" / "model"))


def test_hub_name_offline_says_how_to_pass_a_directory():
    with pytest.raises(
        ModelLoadError, match=r"not in the local Hugging Face cache.*rc\.load_model\('DIR'\)"
    ):
        rc.load_model("some-org/not-a-cached-model")
    assert issubclass(ModelLoadError, OSError)


def test_test_models_have_the_promised_architecture(gpt2_small, qwen):
    cfg = gpt2_small.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_mlp, cfg.n_ctx) == (
        12,
        12,
        768,
        3072,
        1024,
    )
    assert cfg.d_vocab == 50257 and not gpt2_small.training
    assert qwen.cfg.n_key_value_heads == 2 and qwen.cfg.n_heads == 4
    assert "rot" in " ".join(qwen.hook_dict)  # rotary hook points exist


def test_test_models_are_seeded():
    a = rc.testing.tiny_gpt2(seed=1)
    b = rc.testing.tiny_gpt2(seed=1)
    c = rc.testing.tiny_gpt2(seed=2)
    tokens = torch.tensor([[0, 5, 6, 7]])
    torch.testing.assert_close(a(tokens), b(tokens))
    assert not torch.allclose(a(tokens), c(tokens))


@pytest.mark.parametrize("make", [rc.testing.tiny_gpt2, rc.testing.tiny_qwen2])
def test_test_models_take_a_device_and_dtype_and_keep_their_weights(make):
    """The offline test models are not pinned: the dtype (and device) asked for is the
    model's, and its weights are the float32 ones rounded (drawn the same way everywhere)."""
    reference = make(seed=3)
    half = make(seed=3, dtype="bf16", device="cpu")
    pairs = list(
        zip(reference.original_model.parameters(), half.original_model.parameters(), strict=True)
    )
    assert all(p16.dtype == torch.bfloat16 for _, p16 in pairs)
    assert all(torch.equal(p32.to(torch.bfloat16), p16) for p32, p16 in pairs)
    assert half.cfg.dtype == torch.bfloat16 and str(half.cfg.device) == "cpu"
    trace = rc.Trace.from_parts("Q ", "\n1+1=2.\n", " 2", half.tokenizer)
    assert np.isfinite(rc.metrics.answer_logprob(half, trace)).all()
