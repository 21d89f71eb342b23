"""``edgeship split``: where to cut a model between a device and a server, and the two halves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from edgeship.cli._common import console, guard, print_json

__all__ = ["register"]


def split(
    model: Annotated[Path, typer.Argument(help="An .onnx model.")],
    target: Annotated[str, typer.Option("--target", help="The device's profile id (see `edgeship targets`) or a .toml file.")],
    link: Annotated[str, typer.Option("--link", help="BANDWIDTH,RTT[,TX_POWER], e.g. 10mbit,40ms or 2mbit,80ms,0.8w.")] = "10mbit,40ms",
    server: Annotated[str, typer.Option("--server", help="The server's profile (default: this machine, measured).")] = "host",
    wire: Annotated[str, typer.Option("--wire", help="The cut tensor on the wire: fp32, fp16 or int8.")] = "fp32",
    objective: Annotated[str, typer.Option("--objective", help="latency, or energy (the device's) within --max-latency-ms.")] = "latency",
    max_latency_ms: Annotated[Optional[float], typer.Option("--max-latency-ms", help="Latency budget for the cut.")] = None,
    shape: Annotated[Optional[list[str]], typer.Option("--shape", help="Sizes for dynamic dims, e.g. image=1x1x8x8.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write head.onnx, tail.onnx, split.json and split.png here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Estimate every cut of MODEL between a device and a server over a link (head on the device,
    the cut tensor over the link, tail on the server), choose one, and write the two halves."""
    from edgeship.cli.build import parse_shapes
    from edgeship.hybrid.split import extract, plan_split, plot_split

    def work() -> Any:
        shapes = parse_shapes(shape or [])
        plan = plan_split(model, target, server, link, wire, objective, max_latency_ms, shapes)
        files = []
        if out is not None:
            import json

            from edgeship.core.files import atomic_write_text

            head, tail = extract(model, plan.chosen["position"], out, shapes, plan.wire)
            files = [p for p in (head, tail) if p is not None]
            atomic_write_text(out / "split.json", json.dumps(plan.to_dict(), indent=2))
            files += [out / "split.json", plot_split(plan, out / "split.png")]
        return plan, files

    plan, files = guard(work)
    if as_json:
        print_json({**plan.to_dict(), "files": [str(f) for f in files]})
        return
    table = Table(title=f"cuts of {model.name}: {plan.device} -> link -> {plan.server} (estimates)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("cut", "after", "runs", "wire bytes", "head ms", "link ms", "tail ms", "total ms", "device mJ", ""):
        table.add_column(col)
    for row in plan.curve:
        table.add_row(str(row["position"]), row["after"] or "(input)", row["where"], f"{row['wire_bytes']:,}",
                      f"{row['head_ms']:.3g}", f"{row['transfer_ms']:.3g}", f"{row['tail_ms']:.3g}",
                      f"{row['total_ms']:.3g}", f"{row['device_energy_mj']:.3g}",
                      "chosen" if row is plan.chosen else "")
    console.print(table)
    for path in files:
        console.print(f"wrote {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(split)
