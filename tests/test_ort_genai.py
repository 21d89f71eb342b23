"""ONNX Runtime GenAI as the causal-LM engine: built from a Hugging Face directory, it generates with
a KV cache; in fp32 its greedy tokens are torch's, and generation needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


from edgeship.engines.ort_genai import GenAIModel, Sampling, build_genai  # noqa: E402

PROMPT = "the quick brown fox"


def _torch_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(ids):].tolist()


def test_fp32_build_generates_torchs_greedy_tokens(tiny_llama_bpe, tmp_path):
    model = GenAIModel(build_genai(tiny_llama_bpe, tmp_path / "fp32", "fp32"))
    ids = model.encode(PROMPT)
    assert model.decode(ids) == PROMPT
    assert model.generate(ids, 8) == _torch_greedy(tiny_llama_bpe, ids, 8)


def test_int4_build_is_smaller_and_sampling_is_seeded(tiny_llama_bpe, tmp_path):
    fp32 = build_genai(tiny_llama_bpe, tmp_path / "fp32", "fp32")
    int4 = build_genai(tiny_llama_bpe, tmp_path / "int4", "int4")
    size = lambda d: sum(p.stat().st_size for p in Path(d).glob("model.onnx*"))  # noqa: E731
    assert size(int4) < 0.5 * size(fp32)
    model = GenAIModel(int4)
    ids = model.encode(PROMPT)
    sampled = Sampling(temperature=1.0, top_p=0.95, top_k=40, seed=7)
    first, again = model.generate(ids, 12, sampled), model.generate(ids, 12, sampled)
    assert first == again and len(first) == 12 and all(0 <= t < 512 for t in first)


def test_bad_sampling_and_a_missing_model_are_clear_errors(tmp_path):
    import edgeship

    with pytest.raises(edgeship.EdgeshipError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)
    with pytest.raises(edgeship.EdgeshipError, match="not a Hugging Face model directory"):
        build_genai(tmp_path, tmp_path / "out")


def test_generation_needs_no_torch(tiny_llama_bpe, tmp_path):
    folder = build_genai(tiny_llama_bpe, tmp_path / "int4", "int4")
    code = ("from edgeship.engines.ort_genai import GenAIModel\n"
            f"m = GenAIModel({str(folder)!r})\n"
            "print(len(m.generate(m.encode('the quick brown fox'), 5)))\n"
            "import sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("device_only.py")), "--code", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "5"
