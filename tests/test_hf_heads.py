"""Hugging Face directories import with their task heads, inputs from the tokenizer, and id2label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeship
from conftest import cosine, make_tiny_hf

@pytest.fixture(scope="module")
def hf_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-heads")


def _torch_outputs(kind: str, model_dir: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch
    import transformers

    model = getattr(transformers, kind).from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [out[k].numpy() for k in out.keys()]


def _feeds(model_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    enc = tok(["the battery lasts all day", "it broke after a week of use"], padding="max_length", max_length=16,
              return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in names}


@pytest.mark.parametrize("kind, inputs", [
    ("BertForSequenceClassification", ["input_ids", "attention_mask", "token_type_ids"]),
    ("DistilBertForSequenceClassification", ["input_ids", "attention_mask"]),
])
def test_sequence_classifiers_import_with_their_head_and_labels(kind, inputs, hf_root):
    model_dir = make_tiny_hf(kind, hf_root)
    model = edgeship.load(model_dir)
    assert [s.name for s in model.inputs] == inputs
    assert [s.name for s in model.outputs] == ["logits"]
    assert model.task == "text-classification" and model.labels == ("negative", "neutral", "positive")
    feeds = _feeds(model_dir, inputs)
    (ours,) = model.run(feeds)
    (theirs,) = _torch_outputs(kind, model_dir, feeds)
    assert ours.shape == (2, 3)
    assert cosine(ours, theirs) >= 0.9999


@pytest.mark.parametrize("kind, task, outputs", [
    ("BertForTokenClassification", "token-classification", ["logits"]),
    ("BertForQuestionAnswering", "question-answering", ["start_logits", "end_logits"]),
    ("BertForMaskedLM", "fill-mask", ["logits"]),
    ("BertModel", "feature-extraction", ["last_hidden_state"]),
])
def test_other_heads_import_and_match_torch(kind, task, outputs, hf_root):
    model_dir = make_tiny_hf(kind, hf_root)
    model = edgeship.load(model_dir)
    assert model.task == task and [s.name for s in model.outputs] == outputs
    feeds = _feeds(model_dir, [s.name for s in model.inputs])
    for ours, theirs in zip(model.run(feeds), _torch_outputs(kind, model_dir, feeds)):
        assert ours.shape == theirs.shape and cosine(ours, theirs) >= 0.9999


def test_an_unsupported_architecture_is_refused_by_name(hf_root):
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=64)
    out = hf_root / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    with pytest.raises(edgeship.EdgeshipError, match="is a GPT2LMHeadModel, which edgeship does not import yet; "
                                                     "supported heads: \\*ForSequenceClassification"):
        edgeship.load(out)


def test_sentence_transformers_keeps_its_pooled_output(tiny_bert):
    assert tiny_bert.task == "sentence-embedding" and tiny_bert.labels == ()


@pytest.mark.parametrize("field, value", [("vocab_size", 10**9), ("hidden_size", 2**20), ("num_hidden_layers", 10**5)])
def test_an_absurd_config_is_refused_before_anything_is_allocated(field, value, hf_root, tmp_path):
    """A config.json that describes gigabytes beside a few megabytes of weights: one line, exit 2, at once
    (the model is sized on PyTorch's meta device, which allocates nothing)."""
    import json
    import shutil
    import subprocess
    import sys

    source = make_tiny_hf("BertForSequenceClassification", hf_root) if not (
        hf_root / "BertForSequenceClassification").exists() else hf_root / "BertForSequenceClassification"
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    config = json.loads((bad / "config.json").read_text())
    config[field] = value
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(edgeship.EdgeshipError, match="does not match the weights|does not describe a buildable"):
        edgeship.load(bad)
    done = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", str(bad)], capture_output=True, text=True,
                          timeout=300)
    last = done.stderr.strip().splitlines()[-1]  # (after any warning torch prints on import)
    assert done.returncode == 2 and last.startswith("error:") and "Traceback" not in done.stderr, done.stderr


def test_an_absurd_causal_lm_config_is_refused(tiny_llama_bpe, tmp_path):
    import json
    import shutil

    from edgeship.importers.causal_lm import load_causal_lm

    bad = tmp_path / "bad-llm"
    shutil.copytree(tiny_llama_bpe, bad)
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] = 10**9
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(edgeship.EdgeshipError, match="does not match the weights"):
        load_causal_lm(bad)
