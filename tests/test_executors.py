"""Candidates built in worker processes and as Ray tasks match those built in this process."""

from __future__ import annotations

import pytest

import edgeship
from edgeship.search.executors import ProcessExecutor, make_executor
from edgeship.errors import ConfigError

FAST = edgeship.EvalSettings(runs=10, rounds=2, warmup=2, measure_memory=False)
RECIPES = "fp16,static-int8-minmax,dynamic-int8-pc"


def _summary(result):
    return {c.recipe: (c.status == "failed", c.metrics.get("size_bytes"), round(c.metrics.get("accuracy", 0), 4))
            for c in result.candidates}


def test_process_pool_builds_the_same_candidates(cnn_model, cnn_data, digits8):
    local = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=RECIPES,
                              settings=FAST, executor="local")
    pooled = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=RECIPES,
                               settings=FAST, executor=ProcessExecutor(workers=2))
    assert _summary(local) == _summary(pooled)
    assert not any(c.status == "failed" for c in pooled.candidates)


def test_pytorch_recipes_travel_to_workers(cnn_model, cnn_data, digits8):
    chain = edgeship.Recipe.from_dict({"name": "prune-int8", "steps": [
        {"pass": "prune_structured", "amount": 0.3}, {"pass": "quantize_static"}]})
    result = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=[chain, "fp16"],
                               settings=FAST, executor=ProcessExecutor(workers=2),
                               train_data={"image": digits8["x_train"], "labels": digits8["y_train"]})
    by = {c.recipe: c for c in result.candidates}
    assert by["prune-int8"].status != "failed", by["prune-int8"].reason
    assert by["prune-int8"].metrics["macs"] < result.baseline.metrics["macs"]


def test_ray_executor_on_a_local_ray_instance(cnn_model, cnn_data):
    pytest.importorskip("ray")
    import ray

    try:
        result = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=RECIPES,
                                   settings=FAST, executor="ray")
        local = edgeship.optimize(cnn_model, data=cnn_data["calib"], eval_data=cnn_data["eval"], recipes=RECIPES,
                                  settings=FAST, executor="local")
        assert _summary(result) == _summary(local)
    finally:
        ray.shutdown()


def test_unknown_executor_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")
