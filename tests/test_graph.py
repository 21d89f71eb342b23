from __future__ import annotations

import torch

import edgeship


def test_macs_and_params_match_the_analytic_count():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 10 * 10, 5)
    )
    model = edgeship.from_torch(net, torch.randn(1, 3, 10, 10))
    stats = model.stats({"input": (1, 3, 10, 10)})
    conv = 8 * 10 * 10 * 3 * 3 * 3
    fc = 800 * 5
    assert stats["macs"] == conv + fc
    assert stats["params"] == sum(p.numel() for p in net.parameters())


def test_inspect_reports_signature_and_ops(cnn_model):
    info = edgeship.inspect(cnn_model)
    assert info["inputs"][0]["name"] == "image" and info["inputs"][0]["shape"][0] == "batch"
    assert info["ops"]["Conv"] == 3 and info["macs"] > 0 and info["size_bytes"] > 0
    assert "ai.onnx" in info["opset"]
