"""Chat on the device: a verified bundle, its template, streamed text, stop sequences, the fair
scheduler, the prefix cache, cancellation and idle unload. Deterministic: no clocks but injected ones."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest


from edgeship.bundle.keys import load_content_key, load_public_keys  # noqa: E402
from edgeship.engines.ort_genai import GenAIModel, Sampling  # noqa: E402
from edgeship.runtime.llm import Busy, ChatModel, ChatSettings, Job, PromptTooLong  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick brown fox"}]


def _open(bundle: Path, keys: dict[str, Path], **settings) -> ChatModel:
    return ChatModel.open(bundle, load_public_keys(keys["public"]), load_content_key(keys["content"]),
                          settings=ChatSettings(**settings))


def test_chat_follows_the_template_and_greedy_matches_the_engine(tiny_llm_bundle, llm_keys, tiny_genai):
    with _open(tiny_llm_bundle, llm_keys) as chat:
        prompt = chat.chat_prompt(MESSAGES)
        assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nthe quick brown fox<|im_end|>\n" \
                         "<|im_start|>assistant\n"
        pieces = list(chat.stream(prompt, max_tokens=12))
        assert len(pieces) > 1 and chat.last_finish == "length"  # streamed, piece by piece
        done, finished = [], threading.Event()
        job = chat.submit(chat.encode(prompt), lambda t: None, lambda r: (done.append(r), finished.set()), 12)
        engine = GenAIModel(tiny_genai)
        expected = engine.generate(engine.encode(prompt), 12)
        assert finished.wait(120)
        assert done == ["length"] and job.tokens == expected
        folder = chat.folder
    assert not folder.exists()  # the unpacked model goes with close()


def test_stop_sequences_cut_the_text_and_sampling_is_seeded(tiny_llm_bundle, llm_keys):
    with _open(tiny_llm_bundle, llm_keys) as chat:
        full = "".join(chat.stream("the quick brown fox", max_tokens=16))
        stop = full[len(full) // 2: len(full) // 2 + 2]
        cut = "".join(chat.stream("the quick brown fox", max_tokens=16, stop=[stop]))
        assert stop not in cut and full.startswith(cut) and len(cut) < len(full)
        sampled = Sampling(temperature=1.0, top_p=0.9, top_k=20, seed=3)
        a = chat.chat(MESSAGES, max_tokens=10, sampling=sampled)
        b = chat.chat(MESSAGES, max_tokens=10, sampling=sampled)
        assert a == b


def test_limits_are_clear(tiny_llm_bundle, llm_keys):
    with _open(tiny_llm_bundle, llm_keys, context=64, max_tokens=8, default_max_tokens=4) as chat:
        with pytest.raises(PromptTooLong, match="the prompt is 70 tokens; .* context here is 64"):
            chat.check_fits(list(range(70)), 5)
        assert chat.check_fits([1] * 10, 1000) == 8  # capped
        assert chat.check_fits([1] * 62, 1000) == 2  # what the context leaves
        assert chat.check_fits([1] * 10, None) == 4
        with pytest.raises(Exception, match="messages must be"):
            chat.chat_prompt([{"role": "wizard", "content": "x"}])


def _collect(chat: ChatModel, ids: list[int], n: int, log: list, name: str) -> Job:
    return chat.submit(ids, lambda t: log.append((name, t)), lambda r: log.append((name, "END:" + r)), n)


def test_the_scheduler_interleaves_requests_and_queues_the_rest(tiny_genai):
    events: list[tuple[str, int]] = []
    chat = ChatModel(tiny_genai, settings=ChatSettings(parallel=2, max_queue=3, prefill_chunk=4))
    chat.scheduler.on_step = lambda event, job: events.append((event, id(job)))
    chat.scheduler._ensure_thread = lambda: None  # turns are driven by the test, one at a time
    ids = chat.encode("the quick brown fox jumps over the lazy dog")
    log: list = []
    a, b = _collect(chat, ids, 6, log, "a"), _collect(chat, ids[:3], 6, log, "b")
    c = _collect(chat, ids, 2, log, "c")  # a third waits: two slots
    with pytest.raises(Busy):
        _collect(chat, ids, 2, log, "d")  # the queue holds three
    chat.scheduler.turn()
    assert chat.scheduler.queue_length() == 1 and len(chat.scheduler.active) == 2
    while chat.scheduler.active or chat.scheduler.waiting:
        chat.scheduler.turn()
    steps = [j for e, j in events if e in ("prefill", "token")]
    first_a, last_a = steps.index(id(a)), len(steps) - 1 - steps[::-1].index(id(a))
    assert id(b) in steps[first_a:last_a]  # b ran while a was still generating
    assert steps.index(id(c)) > steps.index(id(b))  # c got a slot only when one was freed
    ends = [t for _, t in log if t.startswith("END:")]
    assert sorted(ends) == ["END:length"] * 3 or all(e in ("END:length", "END:stop") for e in ends)
    assert a.completion_tokens == 6 and c.completion_tokens == 2


def test_a_shared_prefix_is_reused_and_gives_the_same_tokens(tiny_genai):
    chat = ChatModel(tiny_genai, settings=ChatSettings(parallel=1))
    system = chat.encode("the quick brown fox jumps over the lazy dog " * 4)
    first = list(chat.stream(system + chat.encode(" one"), max_tokens=5))
    out: list = []
    finished = threading.Event()
    job = chat.submit(system + chat.encode(" two"), lambda t: out.append(("x", t)), lambda r: finished.set(), 5)
    assert finished.wait(120)
    cached = ChatModel(tiny_genai, settings=ChatSettings(parallel=1))
    fresh = "".join(cached.stream(system + chat.encode(" two"), max_tokens=5))
    assert job.cached_tokens >= len(system) - 1 and first
    assert "".join(t for n, t in out if not t.startswith("END")) == fresh
    chat.close()
    cached.close()


def test_a_cancelled_request_stops_at_the_next_step(tiny_genai):
    chat = ChatModel(tiny_genai, settings=ChatSettings(parallel=1))
    chat.scheduler._ensure_thread = lambda: None
    log: list = []
    job = chat.submit(chat.encode("the quick brown fox"), lambda t: (log.append(t), job.cancel()),
                      lambda r: log.append("END:" + r), 50)
    for _ in range(60):
        if job.finish_reason:
            break
        chat.scheduler.turn()
    assert job.finish_reason == "cancelled" and job.completion_tokens <= 2


def test_idle_unload_releases_the_model_by_the_injected_clock(tiny_genai):
    now = [0.0]
    chat = ChatModel(tiny_genai, settings=ChatSettings(idle_unload_s=30), clock=lambda: now[0])
    chat.scheduler._ensure_thread = lambda: None
    job = chat.submit(chat.encode("the quick"), lambda t: None, lambda r: None, 2)
    while not job.finish_reason:
        chat.scheduler.turn()
    assert chat.scheduler.model is not None and not chat.scheduler.unload_if_idle()
    now[0] = 29.0
    assert not chat.scheduler.unload_if_idle()
    now[0] = 31.0
    assert chat.scheduler.unload_if_idle() and chat.scheduler.model is None
    again = chat.submit(chat.encode("the quick"), lambda t: None, lambda r: None, 2)
    while not again.finish_reason:
        chat.scheduler.turn()
    assert chat.scheduler.loads == 2 and again.finish_reason in ("length", "stop")


def test_chat_on_the_device_needs_no_torch(tiny_llm_bundle, llm_keys):
    cli = [sys.executable, str(Path(__file__).with_name("device_only.py")), "chat", str(tiny_llm_bundle),
           "--trust", str(llm_keys["public"]), "--decrypt-key", str(llm_keys["content"]), "--system", "Be brief.",
           "--prompt", "the quick brown fox",
           "--max-tokens", "12"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    bad = subprocess.run(cli[:3] + ["--trust", str(llm_keys["content"]), "--prompt", "x"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
