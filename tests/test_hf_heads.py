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
