"""Block-min int4: a model whose weights lie on GGUF's Q4_1 grid keeps them (fast integer zero points,
with the rounded-off remainder added back through block sums); the default int4 grid does not."""

from __future__ import annotations

import numpy as np
import pytest


from edgeship.engines.blockmin import BLOCK, quantize_blockmin, quantize_sym8  # noqa: E402
from edgeship.engines.ort_genai import GenAIModel, build_genai  # noqa: E402


def _unpack(packed: np.ndarray) -> np.ndarray:
    return np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def test_blockmin_codes_plus_offsets_reproduce_a_q4_1_weight_exactly():
    rng = np.random.default_rng(0)
    k, n = 96, 5
    d = rng.uniform(0.001, 0.05, (n, k // BLOCK, 1)).astype(np.float32)
    lo = rng.uniform(-0.4, 0.1, (n, k // BLOCK, 1)).astype(np.float32)
    q = rng.integers(0, 16, (n, k // BLOCK, BLOCK))
    q[..., 0], q[..., 1] = 0, 15  # Q4_1's block min and max are on the grid
    w = (d * q + lo).reshape(n, k).T  # [K, N], MatMul's layout
    packed, scale, zp, offsets = quantize_blockmin(w)
    zp = _unpack(zp.reshape(n, -1))[:, : k // BLOCK]
    codes = _unpack(packed).astype(np.float32)
    integer_only = scale.reshape(n, -1, 1) * (codes - zp[..., None])
    rebuilt = integer_only + offsets.T[..., None]
    assert np.abs(rebuilt.reshape(n, k).T - w).max() < 1e-6
    assert np.abs(integer_only.reshape(n, k).T - w).max() > 100 * np.abs(rebuilt.reshape(n, k).T - w).max()


def test_sym8_is_q8_0s_grid():
    w = np.linspace(-1, 1, 64 * 3, dtype=np.float32).reshape(64, 3)
    q, scale = quantize_sym8(w)
    back = (q.astype(np.float32) - 128) * scale[..., None]
    assert np.abs(back.reshape(3, 64).T - w).max() <= scale.max() / 2 + 1e-7


def test_a_q4_1_model_keeps_its_quality_where_default_int4_loses_it(tiny_llama_q41, tmp_path):
    from edgeship.demo import demo_sentences
    from edgeship.engines.blockmin import blockmin_int4

    fp32 = GenAIModel(build_genai(tiny_llama_q41, tmp_path / "fp32", "fp32"))
    ids = fp32.encode(" ".join(demo_sentences()[:40]))
    ref = fp32.scores(ids, window=128)
    blockmin = GenAIModel(blockmin_int4(tmp_path / "fp32", tmp_path / "blockmin")).scores(ids, window=128)
    default = GenAIModel(build_genai(tiny_llama_q41, tmp_path / "int4", "int4")).scores(ids, window=128)
    # a random model's next-token distribution is nearly flat, so its top-1 is what rounding moves
    assert blockmin.agreement(ref) >= 0.95 and default.agreement(ref) < blockmin.agreement(ref) - 0.05
    assert blockmin.perplexity / ref.perplexity == pytest.approx(1.0, abs=0.01)
    size = lambda d: sum(p.stat().st_size for p in d.glob("model.onnx*"))  # noqa: E731
    assert size(tmp_path / "blockmin") < 0.4 * size(tmp_path / "fp32")
