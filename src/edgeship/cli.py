"""The ``edgeship`` command line: parses, calls the Python API, renders with rich."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from edgeship.errors import EdgeshipError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="edgeship: import, compress, measure and choose models for edge devices.",
)
# Piped output (logs, CI) has no terminal width; give tables room instead of folding them.
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a user-facing error into one line on stderr and exit status 2."""
    try:
        return fn()
    except EdgeshipError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug in edgeship or a dependency: still one line, unless debugging
        if os.environ.get("EDGESHIP_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {first} (set EDGESHIP_DEBUG=1 for a traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


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
            console.print(f"  [dim]{c.recipe} {c.status}:[/] {c.reason}", highlight=False)
        for note in c.notes:
            console.print(f"  [dim]{c.recipe} note:[/] {note}", highlight=False)
    if result.best is None:
        closest = f"; closest: {result.closest.recipe}, which breaks {result.closest_reason}" if result.closest else ""
        console.print(f"[bold red]nothing fits the budget[/]{closest}", highlight=False)
    else:
        console.print(f"best: [bold]{result.best.recipe}[/]  (* in the table)", highlight=False)
    console.print(f"report: {out / 'report.html'}  (also report.json, pareto.png, best.onnx, candidates/)", highlight=False)


def _progress_runner(label: str) -> tuple[Any, Callable[[int, int, str], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    )
    task = progress.add_task(label, total=None)

    def update(done: int, total: int, name: str) -> None:
        progress.update(task, completed=done, total=total, description=f"{label}: {name}")

    return progress, update


@app.command()
def optimize(
    model: str = typer.Argument(..., help="An .onnx file, a Hugging Face directory, or MODULE:FUNCTION."),
    data: Path = typer.Option(..., "--data", help="Calibration data: .npz (arrays named after the inputs, optional 'labels') or .txt."),
    eval: Optional[Path] = typer.Option(None, "--eval", help="Evaluation data; without it --data is split in two."),
    train: Optional[Path] = typer.Option(None, "--train", help="Training data (.npz with 'labels') for pruning fine-tunes and distillation; adds pruning chains to auto."),
    metric: Optional[str] = typer.Option(None, "--metric", help="accuracy | cosine | mse | MODULE:FUNCTION (default: accuracy if labelled, else cosine)."),
    output: Optional[str] = typer.Option(None, "--output", help="The model output the metric reads (default: the unambiguous one; cosine and mse compare every float output)."),
    recipes: str = typer.Option("auto", "--recipes", help="auto, NAME[,NAME...] (see `edgeship recipes`), or a recipe .yaml/.json."),
    max_accuracy_drop: float = typer.Option(0.01, "--max-accuracy-drop", help="Allowed metric drop, in the metric's units (0.01 = 1 point of accuracy)."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads for every measurement."),
    objective: str = typer.Option("latency", "--objective", help="What `best` minimises: latency | size | memory | energy | accuracy. latency and energy need candidates measurably faster; the others, not slower."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Ask every candidate for at least this speedup (the whole confidence interval)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence of the faster / not-slower verdicts."),
    target: Optional[str] = typer.Option(None, "--target", help="Device profile id (see `edgeship targets`) or .toml: fit estimates and budget lines there."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Budget: latency on the target."),
    max_memory_mb: Optional[float] = typer.Option(None, "--max-memory-mb", help="Budget: peak memory on the target."),
    max_size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="Budget: model file size."),
    max_energy_mj: Optional[float] = typer.Option(None, "--max-energy-mj", help="Budget: energy per inference on the target."),
    request_rate: float = typer.Option(1.0, "--request-rate", help="Requests per second, for the idle share of energy."),
    executor: str = typer.Option("process", "--executor", help="Where candidates are built: process (local pool) | local | ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="An existing Ray cluster for --executor ray (default: start a local one)."),
    seq_len: int = typer.Option(64, "--seq-len", help="Tokens per sentence for .txt data."),
    out: Path = typer.Option(Path("edgeship-out"), "--out", help="Report folder (replaced if it holds an earlier report)."),
) -> None:
    """Compress a model with each recipe, measure every candidate, and pick the best."""
    import edgeship
    from edgeship.pipeline import plan_optimization
    from edgeship.report.writer import check_out_dir

    def work() -> Any:
        check_out_dir(out)
        budget = edgeship.Budget(max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, confidence=confidence,
                                 max_latency_ms=max_latency_ms,
                                 max_memory_mb=max_memory_mb, max_size_mb=max_size_mb, max_energy_mj=max_energy_mj)
        settings = edgeship.EvalSettings(threads=threads, text_max_length=seq_len)
        plan = plan_optimization(model, data=data, eval_data=eval, metric=metric, recipes=recipes,
                                 budget=budget, settings=settings, objective=objective,  # type: ignore[arg-type]
                                 train_data=train, target=target, request_rate_hz=request_rate,
                                 executor=executor, ray_address=ray_address, output=output)
        progress, update = _progress_runner("optimizing")
        with progress:
            result = plan.run(update)
        result.report(out)
        return result

    result = _guard(work)
    _print_results(result, out)
    if result.best is None:  # the report is written; the exit status tells scripts nothing fits
        raise typer.Exit(1)


@app.command()
def targets() -> None:
    """List the device profiles (figures per core; `host` is measured on first use)."""
    from edgeship.targets import list_profiles, load_profile

    def work() -> Any:
        return [load_profile(t) for t in list_profiles()]

    table = Table(title="device profiles", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("id", "cores", "GHz", "fp32/int8 MAC/cycle", "GB/s", "RAM", "storage", "runtimes"):
        table.add_column(col, no_wrap=col != "runtimes")
    for p in _guard(work):
        table.add_row(p.id, str(p.cores), "/".join(f"{s.freq_ghz:g}" for s in p.dvfs),
                      f"{p.fp32_macs_per_cycle:g}/{p.int8_macs_per_cycle:g}", f"{p.mem_bandwidth_gbs:g}",
                      f"{p.ram_mb:,.0f} MB" if p.ram_mb >= 10 else f"{p.ram_mb:g} MB", f"{p.storage_mb:,.0f} MB",
                      ", ".join(p.runtimes))
    console.print(table)
    console.print("Add your own with --target path/to/profile.toml (same fields, each figure with a source).")


def _parse_shapes(shape: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for item in shape:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise EdgeshipError(f"--shape {item!r} is not NAME=D1xD2x...; e.g. input_ids=1x64.") from None
    return shapes


@app.command()
def inspect(
    model: str = typer.Argument(..., help="An .onnx file, a Hugging Face directory, or MODULE:FUNCTION."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    shape: list[str] = typer.Option([], "--shape", help="Sizes for dynamic dims, e.g. input_ids=1x64; without it, MACs of a model with dynamic dims are unknown."),
    target: Optional[str] = typer.Option(None, "--target", help="A device profile id (see `edgeship targets`) or a .toml file: adds a fit report."),
    threads: int = typer.Option(2, "--threads", help="Threads for the estimate and the host measurement."),
    request_rate: float = typer.Option(1.0, "--request-rate", help="Requests per second, for the idle share of energy."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Latency budget for choosing the DVFS state."),
) -> None:
    """Inputs and outputs, opset, op histogram, params, MACs and size; with --target, a fit report."""
    from edgeship.inspection import fit_report, inspect_model
    from edgeship.report.writer import fmt_bytes

    def work() -> Any:
        shapes = _parse_shapes(shape)
        info = inspect_model(model, shapes)
        if target is not None:
            info["estimate"] = fit_report(model, target, shapes, threads, request_rate, max_latency_ms)
        return info

    info = _guard(work)
    if as_json:
        print(json.dumps(info, indent=2))
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
    summary.add_row("params", f"{info['params']:,}")
    macs = f"{info['macs']:,}" if info["macs"] is not None else "unknown: " + "; ".join(info["macs_unknown"])
    summary.add_row("MACs", macs)
    summary.add_row("shapes from", info["shapes"]["from"] + "".join(
        f", {k}={'x'.join(map(str, v))}" for k, v in info["shapes"]["inputs"].items()))
    summary.add_row("size", fmt_bytes(info["size_bytes"]))
    summary.add_row("ops", ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    console.print(summary)
    if "estimate" in info:
        _print_fit(info["estimate"])


def _print_fit(est: dict[str, Any]) -> None:
    from edgeship.report.writer import fmt_bytes

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
    if est["runtime_note"]:
        console.print(f"[yellow]note:[/] {est['runtime_note']}", highlight=False)


@app.command()
def recipes() -> None:
    """List the built-in recipes and the registered passes."""
    from edgeship.passes import PASSES
    from edgeship.recipes import presets

    table = Table(title="recipes", title_justify="left")
    for col in ("name", "steps", "description"):
        table.add_column(col)
    for name, recipe in presets().items():
        table.add_row(name, " -> ".join(s.name for s in recipe.steps), recipe.description)
    console.print(table)
    console.print("passes: " + ", ".join(sorted(PASSES)))


@app.command()
def demo(
    model: str = typer.Option("digits", "--model", help="digits (a CNN trained here in seconds) or minilm (bundled all-MiniLM-L6-v2)."),
    out: Path = typer.Option(Path("edgeship-out"), "--out", help="Report folder."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads for every measurement."),
) -> None:
    """Run the whole pipeline on a built-in model and data set."""
    import edgeship
    from edgeship.pipeline import plan_optimization
    from edgeship.demo import prepare_demo
    from edgeship._workspace import scratch_dir
    from edgeship.report.writer import check_out_dir

    def work() -> Any:
        check_out_dir(out)
        if model not in ("digits", "minilm"):
            raise EdgeshipError(f"unknown demo {model!r}; choose --model digits or --model minilm.")
        progress, update = _progress_runner(f"demo {model}")
        with progress:
            def train_progress(epoch: int, epochs: int, loss: float) -> None:
                update(epoch, epochs, f"training CNN on digits, loss {loss:.3f}")

            update(0, 1, "preparing model and data")
            prepared = prepare_demo(model, scratch_dir("demo"), train_progress)
            plan = plan_optimization(prepared[0], data=prepared[1], eval_data=prepared[2],
                                     settings=edgeship.EvalSettings(threads=threads), train_data=prepared[3])
            result = plan.run(update)
        result.report(out)
        return result

    _print_results(_guard(work), out)


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Folder for signing.key (mode 0600) and signing.pub."),
    content_key: bool = typer.Option(False, "--content-key", help="Also write content.key, 256 bits for encryption."),
) -> None:
    """Make an Ed25519 signing key pair (and, on request, a content key)."""
    from edgeship.bundle.keys import generate_keys

    paths = _guard(lambda: generate_keys(out, content_key))
    for kind, path in paths.items():
        console.print(f"{kind:8s} {path}", highlight=False)


@app.command()
def pack(
    model: Path = typer.Argument(..., help="An .onnx file or an `edgeship optimize` output folder (packs best.onnx)."),
    name: str = typer.Option(..., "--name", help="Bundle name, e.g. digits-cnn."),
    version: int = typer.Option(..., "--version", help="Integer version; devices refuse lower ones."),
    sign_key: Path = typer.Option(..., "--sign-key", help="signing.key from `edgeship keygen`."),
    out: Path = typer.Option(..., "-o", "--out", help="The .edgeship file to write."),
    encrypt_key: Optional[Path] = typer.Option(None, "--encrypt-key", help="content.key: encrypt the model (AES-256-GCM)."),
    target: Optional[str] = typer.Option(None, "--target", help="The device profile this bundle is for."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="A text file with one class label per line."),
    preoptimize: bool = typer.Option(True, "--preoptimize/--no-preoptimize",
                                     help="Apply ONNX Runtime's portable graph optimizations now, so devices load faster."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="A Hugging Face directory or tokenizer.json: the device then takes text (default for an optimize folder of a Hugging Face model: its own)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per text on the device (default: the evaluation's, else 128)."),
) -> None:
    """Pack a model into one signed (optionally encrypted) bundle with a manifest."""
    from edgeship.bundle.pack import pack as pack_bundle

    def work() -> Path:
        label_list = None
        if labels is not None:
            try:
                label_list = [l.strip() for l in labels.read_text().splitlines() if l.strip()]
            except OSError as exc:
                raise EdgeshipError(f"cannot read --labels {str(labels)!r}: {exc.strerror}.") from None
        return pack_bundle(model, name, version, sign_key, out, encrypt_key, target, label_list, preoptimize,
                           tokenizer, max_length)

    path = _guard(work)
    console.print(f"packed {name} v{version} -> {path} ({path.stat().st_size:,} bytes)", highlight=False)


@app.command()
def verify(
    bundle: Path = typer.Argument(..., help="A .edgeship file."),
    trust: list[Path] = typer.Option(..., "--trust", help="Trusted public key(s), signing.pub."),
    decrypt_key: Optional[Path] = typer.Option(None, "--decrypt-key", help="content.key, for encrypted bundles."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Where this device remembers accepted versions."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Accept a version lower than one accepted before."),
) -> None:
    """Check signature, digests, format, version (anti-rollback) and decryption."""
    from edgeship.bundle.format import verify_bundle
    from edgeship.bundle.keys import load_content_key, load_public_keys

    def work() -> Any:
        key = load_content_key(decrypt_key) if decrypt_key else None
        return verify_bundle(bundle, load_public_keys(list(trust)), key, state_dir, allow_downgrade)

    verified = _guard(work)
    m = verified.manifest
    console.print(f"verified {m['name']} v{m['version']} ({'encrypted' if m['encryption'] else 'plain'}, "
                  f"created {m['created']}, model sha256 {m['model_sha256'][:16]}...)", highlight=False)


@app.command()
def run(
    bundle: Path = typer.Argument(..., help="A .edgeship file."),
    trust: list[Path] = typer.Option(..., "--trust", help="Trusted public key(s)."),
    input: Optional[Path] = typer.Option(None, "--input", help="An .npz with one array per model input."),
    text: list[str] = typer.Option([], "--text", help="A text to run (repeat for several); for bundles packed with a tokenizer."),
    top: int = typer.Option(1, "--top", help="With --text on a classifier: how many labels to show per text."),
    decrypt_key: Optional[Path] = typer.Option(None, "--decrypt-key", help="content.key, for encrypted bundles."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the outputs to this .npz."),
    threads: int = typer.Option(2, "--threads", help="Intra-op threads."),
) -> None:
    """Verify a bundle, self-test it, and run one prediction (on an .npz, or on texts)."""
    import numpy as np

    from edgeship.runtime import Runtime

    def work() -> Any:
        from edgeship.errors import ConfigError, DataMismatchError

        if (input is None) == (not text):
            raise ConfigError("give exactly one of --input x.npz or --text \"...\".")
        if input is not None:
            try:
                with np.load(input, allow_pickle=False) as archive:
                    inputs = {k: archive[k] for k in archive.files}
            except (OSError, ValueError) as exc:
                raise DataMismatchError(f"cannot read --input {str(input)!r} as an .npz without pickles: {exc}.") from None
        runtime = Runtime.open(bundle, [str(t) for t in trust], decrypt_key, threads)
        outputs = runtime.predict(inputs if input is not None else {"text": list(text)})
        if output is not None:
            import io

            from edgeship.core.files import atomic_write_bytes

            buffer = io.BytesIO()
            np.savez(buffer, **outputs)
            atomic_write_bytes(output, buffer.getvalue())
        labelled = bool(text) and runtime.labels and runtime.manifest.get("task") == "text-classification"
        first = runtime.manifest["outputs"][0]["name"]
        return outputs, runtime.rank(outputs[first], top) if labelled else None

    outputs, classes = _guard(work)
    if classes is not None:
        for sentence, ranked in zip(text, classes):
            console.print(f"{sentence!r}: " + ", ".join(f"{label} ({score:.3g})" for label, score in ranked),
                          highlight=False, markup=False)
        return
    for name, value in outputs.items():
        console.print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}, "
                      f"first values {np.round(value.reshape(-1)[:5], 4).tolist()}", highlight=False)


@app.command()
def serve(
    bundles: list[Path] = typer.Argument(..., help="One or more .edgeship files (several versions of a name are fine), or `edgeship agent` state directories (served from their current slot, reloaded when the agent switches)."),
    trust: list[Path] = typer.Option(..., "--trust", help="Trusted public key(s), signing.pub."),
    decrypt_key: Optional[Path] = typer.Option(None, "--decrypt-key", help="content.key, for encrypted bundles."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Where this device remembers accepted versions."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help="Accept a version lower than one accepted before."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on; 0 picks a free one."),
    threads: int = typer.Option(2, "--threads", help="ONNX Runtime intra-op threads per model."),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Rows per dynamic batch; 1 turns batching off."),
    max_queue_delay_ms: Optional[float] = typer.Option(
        None, "--max-queue-delay-ms",
        help="Wait this long to fill a batch (0: never wait). Default: adaptive, as many rows as the last batch, "
             "waiting at most a tenth of a batch's run time."),
    max_queue: int = typer.Option(128, "--max-queue", help="Queued requests per model before answering 503."),
    max_request_mb: float = typer.Option(16.0, "--max-request-mb", help="Larger request bodies get 413."),
    cache_size: int = typer.Option(0, "--cache-size", help="LRU cache of results, entries per model (0: off)."),
    idle_unload: Optional[float] = typer.Option(None, "--idle-unload",
                                                help="Unload a model idle this many seconds; reload on the next request."),
    reload_poll: float = typer.Option(0.5, "--reload-poll",
                                      help="For an agent's state directory: seconds between checks for a switched "
                                           "bundle (the agent also asks for it at once)."),
) -> None:
    """Serve bundles over the Open Inference Protocol (KServe v2 REST), with batching and metrics."""
    from edgeship.runtime.server import ServeSettings, Trust, serve as serve_bundles

    def listening(address: str, bound: int, hosts: list[Any]) -> None:
        for h in hosts:
            kind = "encrypted" if h.manifest["encryption"] else "plain"
            console.print(f"verified {h.name} v{h.version} ({kind}, self-test passed, "
                          f"{'batch axis' if h.batched else 'no batch axis'})", highlight=False)
        console.print(f"serving on http://{address}:{bound}  (Open Inference Protocol v2; metrics at /metrics)",
                      highlight=False)
        sys.stdout.flush()

    def work() -> None:
        from edgeship.bundle.keys import load_content_key, load_public_keys

        key = load_content_key(decrypt_key) if decrypt_key else None
        settings = ServeSettings(host=host, port=port, threads=threads, max_batch_size=max_batch_size,
                                 max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue,
                                 max_request_bytes=int(max_request_mb * (1 << 20)), cache_size=cache_size,
                                 idle_unload_s=idle_unload, reload_poll_s=reload_poll)
        serve_bundles(list(bundles), Trust(load_public_keys(list(trust)), key, state_dir, allow_downgrade),
                      settings, on_listening=listening)

    _guard(work)


repo_app = typer.Typer(no_args_is_help=True, help="A TUF-secured static update repository for model bundles.")
fleet_app = typer.Typer(no_args_is_help=True, help="Fleet status: where every device stands.")
app.add_typer(repo_app, name="repo")
app.add_typer(fleet_app, name="fleet")


@repo_app.command("init")
def repo_init(
    directory: Path = typer.Argument(..., help="A new folder for the repository."),
    timestamp_hours: float = typer.Option(24.0, "--timestamp-hours", help="How long a timestamp stays valid."),
    snapshot_days: float = typer.Option(30.0, "--snapshot-days", help="How long a snapshot stays valid."),
    targets_days: float = typer.Option(90.0, "--targets-days", help="How long targets metadata stays valid."),
    root_days: float = typer.Option(365.0, "--root-days", help="How long root metadata stays valid."),
) -> None:
    """Create keys and signed TUF metadata (root, targets, snapshot, timestamp)."""
    from edgeship.ota.repository import RepoSettings, init_repo

    root = _guard(lambda: init_repo(directory, RepoSettings(root_days, targets_days, snapshot_days, timestamp_hours)))
    console.print(f"repository in {directory}: serve {directory / 'public'} over HTTP; devices ship {root}; "
                  f"keep {directory / 'keys'} private (offline, ideally).", highlight=False)


@repo_app.command("timestamp")
def repo_timestamp(directory: Path = typer.Argument(..., help="The repository folder.")) -> None:
    """Re-sign timestamp.json (run it more often than --timestamp-hours, e.g. from cron)."""
    from edgeship.ota.repository import refresh_timestamp

    version = _guard(lambda: refresh_timestamp(directory))
    console.print(f"timestamp v{version} signed", highlight=False)


@repo_app.command("rollout")
def repo_rollout(
    directory: Path = typer.Argument(..., help="The repository folder."),
    model: str = typer.Option(..., "--model", help="Model name."),
    version: int = typer.Option(..., "--version", help="The published version to change."),
    percent: float = typer.Option(..., "--percent", help="Share of devices, 0-100, chosen by a stable hash of the device id."),
    channel: str = typer.Option("stable", "--channel", help="stable or canary."),
) -> None:
    """Change how many devices a published release reaches."""
    from edgeship.ota.repository import set_rollout

    _guard(lambda: set_rollout(directory, model, version, percent, channel))
    console.print(f"{model} v{version} on {channel}: rollout {percent:g}%", highlight=False)


@app.command()
def publish(
    bundle: Path = typer.Argument(..., help="A .edgeship bundle."),
    repo: Path = typer.Option(..., "--repo", help="The repository folder (from `edgeship repo init`)."),
    channel: str = typer.Option("stable", "--channel", help="stable or canary."),
    rollout: float = typer.Option(100.0, "--rollout", help="Share of devices that take it, 0-100."),
    trust: Optional[list[Path]] = typer.Option(None, "--trust", help="Check the bundle's signature against these keys first."),
) -> None:
    """Add a bundle to the update repository as the newest release of its model on a channel."""
    from edgeship.ota.repository import publish as publish_bundle

    def work() -> Any:
        keys = None
        if trust:
            from edgeship.bundle.keys import load_public_keys

            keys = load_public_keys(list(trust))
        return publish_bundle(repo, bundle, channel, rollout, keys)

    index = _guard(work)
    latest = index["releases"][-1]
    console.print(f"published {index['model']} v{latest['version']} on {channel} ({latest['rollout']:g}% rollout)",
                  highlight=False)


@app.command()
def agent(
    repo_url: str = typer.Option(..., "--repo-url", help="Where the repository's public folder is served."),
    root: Path = typer.Option(..., "--root", help="The repository's root.json that this device shipped with."),
    state_dir: Path = typer.Option(..., "--state-dir", help="The device's A/B slots and update state."),
    model: str = typer.Option(..., "--model", help="The model this device runs."),
    trust: list[Path] = typer.Option(..., "--trust", help="Trusted bundle signing key(s), signing.pub."),
    decrypt_key: Optional[Path] = typer.Option(None, "--decrypt-key", help="content.key, for encrypted bundles."),
    channel: str = typer.Option("stable", "--channel", help="stable or canary."),
    device_id: Optional[str] = typer.Option(None, "--device-id", help="Default: generated once and kept in the state dir."),
    health_url: Optional[str] = typer.Option(None, "--health-url",
                                             help="The local `edgeship serve STATE_DIR`, checked after each switch."),
    fleet_url: Optional[str] = typer.Option(None, "--fleet-url", help="`edgeship fleet serve` to report to."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Check every S seconds (with 10% jitter)."),
    once: bool = typer.Option(False, "--once", help="Check once and exit (status 1 if an update was refused)."),
) -> None:
    """Keep a model up to date from the repository: verify, A/B install, self-test, health check, commit or roll back."""
    from edgeship.ota.agent import Agent, AgentConfig

    if once == (interval is not None):
        err_console.print("[bold red]error:[/] give exactly one of --once or --interval S.", highlight=False)
        raise typer.Exit(2)

    def show(result: Any) -> None:
        recovered = result.details.get("recovered")
        if recovered:
            console.print(f"recovered: {recovered}", highlight=False)
        style = "green" if result.status in ("updated", "up-to-date") else "bold red"
        console.print(f"[{style}]{result.status}[/]: {result.message}", highlight=False)
        sys.stdout.flush()

    def work() -> Any:
        from edgeship.bundle.keys import load_content_key, load_public_keys

        config = AgentConfig(repo_url, root, state_dir, model, load_public_keys(list(trust)),
                             load_content_key(decrypt_key) if decrypt_key else None, channel, device_id,
                             health_url, fleet_url)
        return Agent(config).run(interval, on_result=show)

    result = _guard(work)
    raise typer.Exit(0 if result.ok else 1)


@fleet_app.command("serve")
def fleet_serve(
    db: Path = typer.Option(Path("fleet.sqlite"), "--db", help="SQLite file for the reports."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8100, "--port"),
) -> None:
    """Receive agents' reports (POST /v1/reports) and serve them (GET /v1/devices)."""
    import uvicorn

    from edgeship.ota.fleet import create_fleet_app

    app_ = _guard(lambda: create_fleet_app(db))
    console.print(f"fleet status on http://{host}:{port}/v1/devices (reports in {db})", highlight=False)
    sys.stdout.flush()
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@fleet_app.command("status")
def fleet_status(
    url: str = typer.Option("http://127.0.0.1:8100", "--url", help="The fleet service."),
    model: Optional[str] = typer.Option(None, "--model", help="Only this model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Print every device's model, version, slot, health and last error."""
    from edgeship.ota.fleet import fetch_status

    rows = _guard(lambda: fetch_status(url, model))
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"fleet: {len(rows)} device(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("device", "model", "channel", "version", "slot", "health", "last error", "reported"):
        table.add_column(column, no_wrap=column != "last error")
    for r in rows:
        health = r.get("health") or ""
        table.add_row(r["device_id"], r["model"], r.get("channel") or "", str(r.get("version") or "-"),
                      r.get("slot") or "-", f"[green]{health}[/]" if health == "ok" else f"[red]{health}[/]",
                      r.get("last_error") or "", r.get("reported_at") or "")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
