"""`edgeship serve` on an LLM bundle: OpenAI-compatible, driven by the real `openai` client over HTTP
on 127.0.0.1; several clients at once, disconnects cancel, refusals are 4xx."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import openai  # noqa: E402 - the real client, from the test extra

import httpx  # noqa: E402

DEVICE_EDGESHIP = [sys.executable, str(Path(__file__).with_name("device_only.py"))]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick brown fox"}]


@contextlib.contextmanager
def llm_server(bundle: Path, keys: dict[str, Path], *extra: str):
    """A device-only `edgeship serve` process on 127.0.0.1 (port 0), stopped at the end."""
    cmd = [*DEVICE_EDGESHIP, "serve", str(bundle), "--trust", str(keys["public"]), "--decrypt-key",
           str(keys["content"]), "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:  # ends when the process exits
            lines.append(line)
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                break
        else:
            raise AssertionError(f"server exited: {''.join(lines)} {proc.stderr.read()}")
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(60)


def _client(base: str) -> "openai.OpenAI":
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tiny_server(tiny_llm_bundle, llm_keys):
    with llm_server(tiny_llm_bundle, llm_keys, "--context", "128", "--max-tokens", "16") as base:
        yield base


def test_models_chat_stream_and_completions(tiny_server):
    client = _client(tiny_server)
    assert [m.id for m in client.models.list()] == ["tiny"]
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant" and text
    assert whole.usage.prompt_tokens > 10 and 0 < whole.usage.completion_tokens <= 8
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: the prefix cache
    done = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=4, temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("length", "stop")


def test_refusals_are_4xx_with_the_numbers(tiny_server):
    client = _client(tiny_server)
    with pytest.raises(openai.BadRequestError, match=r"the prompt is \d+ tokens; .*context here is 128 tokens"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the fox " * 200}])
    with pytest.raises(openai.NotFoundError, match="serves the model 'tiny'"):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=5)
    with pytest.raises(openai.BadRequestError, match="each message needs a role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    capped = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100_000, temperature=0)
    assert capped.usage.completion_tokens <= 16  # --max-tokens caps every request
    for body in (b"{", b"[]", b'{"messages": 3}', b'{"messages": [], "max_tokens": true}'):
        response = httpx.post(tiny_server + "/v1/chat/completions", content=body,
                              headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["message"], body
    big = httpx.post(tiny_server + "/v1/completions", content=b"x" * (20 << 20))
    assert big.status_code == 413
    assert _client(tiny_server).models.list()  # still serving


def test_two_streams_progress_together(tiny_server):
    """Each client waits for the other's first token before reading on: a server that finished one
    request before starting the next would never get there."""
    client = _client(tiny_server)
    started = [threading.Event(), threading.Event()]
    results: dict[int, str] = {}

    def talk(i: int) -> None:
        stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0,
                                                stream=True)
        text = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                started[i].set()
                if not started[1 - i].wait(60):
                    results[i] = "the other request never started"
                    return
        results[i] = "".join(text)

    threads = [threading.Thread(target=talk, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results[0] == results[1] and "never started" not in results[0]
    metrics = httpx.get(tiny_server + "/metrics").text
    assert re.search(r"edgeship_llm_time_to_first_token_seconds_count \d", metrics)
    assert re.search(r"edgeship_llm_completion_tokens_total [1-9]", metrics)


def test_a_disconnected_client_is_cancelled(tiny_genai):
    """In-process: the scheduler holds the request after its first token until the cancel arrives."""
    import uvicorn

    from edgeship.runtime.llm import ChatModel, ChatSettings
    from edgeship.runtime.openai_server import create_openai_app
    from edgeship.core.http import bind

    chat = ChatModel(tiny_genai, {"name": "tiny"}, ChatSettings(context=256, max_tokens=200))
    app = create_openai_app(chat)
    recorded = chat.scheduler.on_step
    finished = threading.Event()

    def on_step(event: str, job) -> None:  # type: ignore[no-untyped-def]
        recorded(event, job)
        if event == "token" and job.completion_tokens == 1:
            job.cancelled.wait(60)  # the disconnect, seen by the server, cancels the job
        if event == "finish":
            finished.reason = job.finish_reason  # type: ignore[attr-defined]
            finished.set()

    chat.scheduler.on_step = on_step
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"  # listening already: connections wait in the backlog
        with httpx.stream("POST", base + "/v1/completions", json={"prompt": "the quick brown fox", "stream": True,
                                                                  "max_tokens": 200}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # one event read, then the client goes away
        assert finished.wait(60) and finished.reason == "cancelled"  # type: ignore[attr-defined]
        metrics = httpx.get(base + "/metrics").text
        assert 'edgeship_llm_requests_total{finish_reason="cancelled"} 1.0' in metrics
    finally:
        server.should_exit = True
        thread.join(60)
        chat.close()


def test_smollm2_bundle_streams_a_chat_answer(smol_optimized, llm_keys, tmp_path):
    """The issue's done-when: optimize's choice, packed, served, streams an answer to the openai client."""
    from edgeship.bundle.llm import pack_llm

    _, out = smol_optimized
    bundle = pack_llm(out, "smollm2", 1, llm_keys["private"], tmp_path / "smollm2.edgeship", llm_keys["content"])
    with llm_server(bundle, llm_keys) as base:
        stream = _client(base).chat.completions.create(
            model="smollm2", stream=True, max_tokens=24, temperature=0,
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of France?"}])
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2 and "Paris" in "".join(pieces)
