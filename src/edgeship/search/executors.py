"""Where candidates are built: in this process, a local process pool (default), or Ray tasks.

Only the building (running a recipe's passes) is spread out: that is where the time goes.
Quality, memory and latency are measured afterwards in the calling process, latency timed
interleaved, because timing models side by side on shared cores would corrupt the numbers.
Jobs and results travel between our own processes by pickle; nothing from outside is
unpickled.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from edgeship.errors import ConfigError
from edgeship.model import Model

__all__ = ["build_candidate", "make_executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "EXECUTORS"]

Job = tuple[int, Any, Model, Any, Any, Path]  # (index, recipe, model, calibration, train, workdir)
Outcome = tuple[int, "Model | BaseException"]


def build_candidate(recipe: Any, model: Model, calibration: Any, train: Any, workdir: Path,
                    progress: Callable[[str], None] | None = None) -> Model:
    """Run ``recipe`` on ``model``; outputs go to ``workdir`` (which the caller owns)."""
    from edgeship.passes import PassContext

    workdir.mkdir(parents=True, exist_ok=True)
    return recipe.apply(model, PassContext(workdir, calibration, train, progress))


def _needs_torch(recipe: Any) -> bool:
    from edgeship.passes._torch import PRUNABLE  # noqa: F401 - PyTorch passes live beside it

    return any(not step.keeps_architecture and step.name != "optimize_graph" for step in recipe.steps)


def _slim(job: Job) -> Job:
    """Drop the PyTorch modules from jobs whose recipe never uses them (less to send)."""
    index, recipe, model, calibration, train, workdir = job
    if not _needs_torch(recipe):
        model = replace(model, torch_module=None, teacher_module=None)
    return index, recipe, model, calibration, train, workdir


def _run_job(job: Job, threads: int | None = None) -> Outcome:
    index, recipe, model, calibration, train, workdir = job
    if threads:  # a worker's share of the cores, so that workers do not oversubscribe them
        import torch

        torch.set_num_threads(threads)
    try:
        return index, build_candidate(recipe, model, calibration, train, workdir)
    except Exception as exc:  # sent back and recorded as the candidate's failure
        return index, exc


class LocalExecutor:
    """One candidate after another, in this process (shows each pass's progress)."""

    name = "local"

    def run(self, jobs: list[Job], progress: Callable[[int, str], None]) -> Iterator[Outcome]:
        for index, recipe, model, calibration, train, workdir in jobs:
            try:
                yield index, build_candidate(recipe, model, calibration, train, workdir,
                                             lambda text, i=index: progress(i, text))
            except Exception as exc:
                yield index, exc


class ProcessExecutor:
    """A local pool of worker processes (spawned, so PyTorch's threads start clean).

    By default one worker per two cores: each pass runs multi-threaded kernels, and workers
    that share too few cores oversubscribe them (measured: on 2 cores, two workers made the
    digits demo take 65 s instead of 32 s). On a 2-core machine that is one worker, which
    builds in this process.
    """

    name = "process"

    def __init__(self, workers: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.workers = workers or max(1, cores // 2)
        self.threads = max(1, cores // self.workers)

    def run(self, jobs: list[Job], progress: Callable[[int, str], None]) -> Iterator[Outcome]:
        if len(jobs) <= 1 or self.workers == 1:
            yield from LocalExecutor().run(jobs, progress)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), mp_context=ctx) as pool:
            futures = {pool.submit(_run_job, _slim(job), self.threads): job[0] for job in jobs}
            for job in jobs:
                progress(job[0], f"building on {min(self.workers, len(jobs))} worker processes")
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # a worker died or a result could not travel back
                    yield futures[future], exc


class RayExecutor:
    """Ray tasks on an existing cluster (``address``) or a local Ray instance."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'edgeship[ray]'.") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus or os.cpu_count()}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kwargs)
        self._ray = ray
        self._task = ray.remote(num_cpus=1)(_run_job)

    def run(self, jobs: list[Job], progress: Callable[[int, str], None]) -> Iterator[Outcome]:
        ray = self._ray
        pending = {self._task.remote(_slim(job)): job[0] for job in jobs}
        for job in jobs:
            progress(job[0], "building as Ray tasks")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            index = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as exc:
                yield index, exc


EXECUTORS = ("process", "local", "ray")


def make_executor(spec: Any, ray_address: str | None = None) -> Any:
    if hasattr(spec, "run"):
        return spec
    if spec in (None, "process"):
        return ProcessExecutor()
    if spec == "local":
        return LocalExecutor()
    if spec == "ray":
        return RayExecutor(ray_address)
    raise ConfigError(f"unknown executor {spec!r}; choose from {list(EXECUTORS)}.")
