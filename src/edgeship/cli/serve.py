"""`edgeship serve`: the Open Inference Protocol server for bundles (device side)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgeship.cli._common import console, guard
from edgeship.core.errors import ConfigError
from edgeship.core.http import read_token_file

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
    context: Annotated[int, typer.Option("--context", min=16, help="LLM bundles: tokens of KV cache per request slot (prompt + answer).")] = 2048,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="LLM bundles: requests generating at once (slots); more wait in the queue.")] = 2,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="LLM bundles: the cap on a request's max_tokens.")] = 512,
    token_file: Annotated[Optional[Path], typer.Option("--token-file", help="A file holding a bearer token that model and repository requests must carry.")] = None,
    upstream: Annotated[Optional[str], typer.Option("--upstream", help="Hybrid bundles: the OIP server (http(s)://HOST:PORT) that runs the tail; the device falls back to the whole model when it fails.")] = None,
    upstream_token_file: Annotated[Optional[Path], typer.Option("--upstream-token-file", help="A file holding the upstream's bearer token.")] = None,
    upstream_timeout: Annotated[float, typer.Option("--upstream-timeout", help="Seconds to wait for the upstream before answering locally.")] = 2.0,
    breaker_failures: Annotated[int, typer.Option("--breaker-failures", min=1, help="Upstream failures in a row before the device stops calling it.")] = 3,
    breaker_cooldown: Annotated[float, typer.Option("--breaker-cooldown", help="Seconds before one trial call to an upstream that failed.")] = 30.0,
    offload: Annotated[bool, typer.Option("--offload/--no-offload", help="Hybrid bundles: send whole requests to the upstream's copy of this bundle (served there under its own name) when the link or the queue makes that faster.")] = True,
) -> None:
    """Serve bundles over the Open Inference Protocol (KServe v2 REST), with batching and metrics.

    An LLM bundle is served OpenAI-compatibly instead: /v1/chat/completions, /v1/completions, /v1/models."""
    from edgeship.runtime.server import ServeSettings, Trust, serve as serve_bundles

    def listening(address: str, bound: int, hosts: list[Any]) -> None:
        for h in hosts:
            kind = "encrypted" if h.manifest["encryption"] else "plain"
            text = ", takes text" if h.text_input else ""
            console.print(f"verified {h.name} v{h.version} ({kind}, self-test passed, "
                          f"{'batch axis' if h.batched else 'no batch axis'}{text})", highlight=False)
            if h.hybrid is not None:
                console.print(f"hybrid: the head runs here, {h.hybrid.plan['tail_model']} at {h.hybrid.upstream.url}; "
                              "the whole model here when it fails", highlight=False)
        console.print(f"serving on http://{address}:{bound}  (Open Inference Protocol v2; metrics at /metrics)",
                      highlight=False)
        sys.stdout.flush()

    def llm_listening(address: str, bound: int, chat: Any) -> None:
        kind = "encrypted" if chat.manifest.get("encryption") else "plain"
        console.print(f"verified {chat.name} v{chat.manifest['version']} ({kind}, self-test passed, "
                      f"{chat.context_length} tokens of context x {parallel} slots)", highlight=False, markup=False)
        console.print(f"serving on http://{address}:{bound}/v1  (OpenAI-compatible; metrics at /metrics)",
                      highlight=False)
        sys.stdout.flush()

    def work() -> None:
        from edgeship.bundle.keys import load_content_key, load_public_keys
        from edgeship.bundle.llm import LLM_FORMAT, bundle_format

        key = load_content_key(decrypt_key) if decrypt_key else None
        settings = ServeSettings(host=host, port=port, threads=threads, max_batch_size=max_batch_size,
                                 max_queue_delay_ms=max_queue_delay_ms, max_queue=max_queue,
                                 max_request_bytes=int(max_request_mb * (1 << 20)), cache_size=cache_size,
                                 idle_unload_s=idle_unload, reload_poll_s=reload_poll,
                                 token=read_token_file(token_file), upstream=upstream,
                                 upstream_token=read_token_file(upstream_token_file), upstream_timeout_s=upstream_timeout,
                                 breaker_failures=breaker_failures, breaker_cooldown_s=breaker_cooldown,
                                 offload=offload)
        trusted = Trust(load_public_keys(list(trust)), key, state_dir, allow_downgrade)
        llm = [b for b in bundles if b.is_file() and bundle_format(b) == LLM_FORMAT]
        if not llm:
            serve_bundles(list(bundles), trusted, settings, on_listening=listening)
            return
        if len(bundles) > 1:
            raise ConfigError("serve one LLM bundle per server (it takes the machine's cores); start another server "
                              "on another --port for the rest.")
        from edgeship.runtime.llm import ChatSettings
        from edgeship.runtime.openai_server import serve_llm

        chat_settings = ChatSettings(context=context, parallel=parallel, max_queue=max_queue, max_tokens=max_tokens,
                                     default_max_tokens=min(256, max_tokens), idle_unload_s=idle_unload)
        serve_llm(llm[0], trusted, settings, chat_settings, on_listening=llm_listening)

    guard(work)


def chat(
    bundle: Annotated[Path, typer.Argument(help="An LLM .edgeship bundle.")],
    trust: Annotated[list[Path], typer.Option("--trust", help="Trusted public key(s), signing.pub.")],
    decrypt_key: Annotated[Optional[Path], typer.Option("--decrypt-key", help="content.key, for encrypted bundles.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Ask one question, print the answer and exit (else read questions from the terminal).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system prompt.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens per answer at most.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 answers greedily.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")] = 0.95,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens.")] = 40,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="> 1 discourages repeats.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Repeatable sampling.")] = None,
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop the answer at this text (repeatable).")] = None,
    context: Annotated[int, typer.Option("--context", min=16, help="Tokens of conversation kept (KV cache).")] = 2048,
) -> None:
    """Chat with an LLM bundle on this device: verified, self-tested, answers streamed as they come."""
    from edgeship.engines.ort_genai import Sampling
    from edgeship.runtime.llm import ChatModel, ChatSettings

    def open_chat() -> Any:
        from edgeship.bundle.keys import load_content_key, load_public_keys

        key = load_content_key(decrypt_key) if decrypt_key else None
        settings = ChatSettings(context=context, parallel=1, max_tokens=max_tokens, default_max_tokens=max_tokens)
        sampling = Sampling(temperature, top_p, top_k, repetition_penalty, seed)
        return ChatModel.open(bundle, load_public_keys(list(trust)), key, settings=settings), sampling

    model, sampling = guard(open_chat)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    try:
        questions = [prompt] if prompt is not None else _questions(model.name)
        for question in questions:
            history.append({"role": "user", "content": question})

            def answer() -> str:
                pieces = []
                for piece in model.stream_chat(history, max_tokens=max_tokens, sampling=sampling, stop=list(stop or [])):
                    pieces.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                return "".join(pieces)

            history.append({"role": "assistant", "content": guard(answer)})
            sys.stdout.write("\n")
    finally:
        model.close()


def _questions(name: str) -> Any:
    console.print(f"chatting with {name}; an empty line or Ctrl-D ends.", highlight=False, markup=False)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(chat)
