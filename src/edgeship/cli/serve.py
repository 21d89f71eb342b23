"""`edgeship serve`: the Open Inference Protocol server for bundles (device side)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgeship.cli._common import console, guard

__all__ = ["register"]


def serve(
    bundles: Annotated[list[Path], typer.Argument(help="One or more .edgeship files (several versions of a name are fine), or `edgeship agent` state directories (served from their current slot, reloaded when the agent switches).")],
    trust: Annotated[list[Path], typer.Option("--trust", help="Trusted public key(s), signing.pub.")],
    decrypt_key: Annotated[Optional[Path], typer.Option("--decrypt-key", help="content.key, for encrypted bundles.")] = None,
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", help="Where this device remembers accepted versions.")] = None,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="Accept a version lower than one accepted before.")] = False,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    threads: Annotated[int, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads per model.")] = 2,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, help="Rows per dynamic batch; 1 turns batching off.")] = 16,
    max_queue_delay_ms: Annotated[Optional[float], typer.Option("--max-queue-delay-ms", help="Wait this long to fill a batch (0: never wait). Default: adaptive, as many rows as the last batch, waiting at most a tenth of a batch's run time.")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Queued requests per model before answering 503.")] = 128,
    max_request_mb: Annotated[float, typer.Option("--max-request-mb", help="Larger request bodies get 413.")] = 16.0,
    cache_size: Annotated[int, typer.Option("--cache-size", min=0, help="LRU cache of results, entries per model (0: off).")] = 0,
    idle_unload: Annotated[Optional[float], typer.Option("--idle-unload", help="Unload a model idle this many seconds; reload on the next request.")] = None,
    reload_poll: Annotated[float, typer.Option("--reload-poll", help="For an agent's state directory: seconds between checks for a switched bundle (the agent also asks for it at once).")] = 0.5,
) -> None:
    """Serve bundles over the Open Inference Protocol (KServe v2 REST), with batching and metrics."""
    from edgeship.runtime.server import ServeSettings, Trust, serve as serve_bundles

    def listening(address: str, bound: int, hosts: list[Any]) -> None:
        for h in hosts:
            kind = "encrypted" if h.manifest["encryption"] else "plain"
            text = ", takes text" if h.text_input else ""
            console.print(f"verified {h.name} v{h.version} ({kind}, self-test passed, "
                          f"{'batch axis' if h.batched else 'no batch axis'}{text})", highlight=False)
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

    guard(work)


def register(app: typer.Typer) -> None:
    app.command()(serve)
