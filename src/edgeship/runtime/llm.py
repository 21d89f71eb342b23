"""Generative models on the device: a verified LLM bundle, chat with its own template, streamed text,
stop sequences, and a fair scheduler for several clients (numpy + onnxruntime-genai; no torch).

The scheduler owns every generator and runs on one thread. Each turn it gives every active request
one step: one chunk of its prompt, or one new token. So a long prompt or a long answer never blocks
the others, and time to first token grows with the number of clients, not with their lengths.

Requests run in *slots* (like llama.cpp's server): at most ``parallel`` at once, each a generator
with a KV cache of ``context`` tokens. A finished slot keeps its cache; the next request whose prompt
starts the same way (a shared system prompt) rewinds the slot to the common prefix and computes only
the rest: the prefix cache.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.errors import ConfigError, EdgeshipError

__all__ = ["ChatModel", "ChatSettings", "Job", "Scheduler", "PromptTooLong", "Busy"]


class PromptTooLong(ConfigError):
    """A prompt (with the tokens asked for) that does not fit the context."""


class Busy(EdgeshipError):
    """The queue is full."""


@dataclass(frozen=True)
class ChatSettings:
    context: int = 2048  # tokens per slot (prompt + answer); capped at the model's trained context
    parallel: int = 2  # slots: requests generating at once
    max_queue: int = 32  # requests waiting for a slot before Busy
    max_tokens: int = 512  # the cap on a request's max_tokens
    default_max_tokens: int = 256  # when a request gives none (capped by max_tokens too)
    prefill_chunk: int = 128
    idle_unload_s: float | None = None  # release the model after this long without requests

    def __post_init__(self) -> None:
        small = {k: v for k, v in self.__dict__.items() if isinstance(v, int) and v < 1}
        if small:
            raise ConfigError(f"{', '.join(small)} must be >= 1, got {small}.")
        if self.idle_unload_s is not None and self.idle_unload_s <= 0:
            raise ConfigError(f"idle unload must be > 0 seconds, got {self.idle_unload_s}.")


@dataclass
class Job:
    """One generation request. ``emit(text)`` gets each piece of text, ``finish(reason)`` once
    (``stop``, ``length``, ``cancelled`` or ``error: ...``); both are called on the scheduler thread."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str], None]
    finish: Callable[[str], None]
    sampling: Any = None
    stop: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = 0.0
    first_token_at: float | None = None
    completion_tokens: int = 0
    tokens: list[int] = field(default_factory=list)  # the generated ids
    cached_tokens: int = 0
    finish_reason: str = ""
    # scheduler state
    slot: Any = None
    pending: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


class _Slot:
    def __init__(self, model: Any, context: int) -> None:
        self.model, self.context = model, context
        self.generator: Any = None
        self.history: list[int] = []  # the tokens in this slot's KV cache
        self.stream: Any = None
        self._sampling: Any = None

    def start(self, job: Job) -> None:
        """Reuse the cached prefix (rewind), or start a new generator."""
        og = self.model._og
        common = _common_prefix(self.history, job.prompt_ids[:-1])  # keep at least one prompt token to compute
        greedy = job.sampling is None or job.sampling.temperature == 0  # a seeded sampler starts afresh
        if greedy and self.generator is not None and self._sampling == job.sampling and common > 0:
            self.generator.rewind_to(common)
        else:
            params = og.GeneratorParams(self.model.model)
            params.set_search_options(max_length=self.context, **(job.sampling.options() if job.sampling else {}))
            self.generator, common = og.Generator(self.model.model, params), 0
            self._sampling = job.sampling
        self.history = job.prompt_ids[:common]
        job.cached_tokens, job.pending = common, job.prompt_ids[common:]
        self.stream = self.model.tokenizer.create_stream()


class Scheduler:
    """Round-robin over active requests, one step each (see the module docstring)."""

    def __init__(self, opener: Callable[[], Any], settings: ChatSettings, clock: Callable[[], float] = time.monotonic,
                 on_step: Callable[[str, Job], None] | None = None) -> None:
        self.opener, self.settings, self.clock = opener, settings, clock
        self.on_step = on_step or (lambda event, job: None)
        self.model: Any = None
        self.slots: list[_Slot] = []
        self.waiting: collections.deque[Job] = collections.deque()
        self.active: list[Job] = []
        self.cond = threading.Condition()
        self.last_activity = clock()
        self.loads = 0
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- the caller's side -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.cond:
            if len(self.waiting) >= self.settings.max_queue:
                raise Busy(f"{len(self.waiting)} requests are waiting; try again later.")
            job.created = self.clock()
            self.waiting.append(job)
            self.cond.notify()
        self._ensure_thread()

    def queue_length(self) -> int:
        return len(self.waiting)

    def close(self) -> None:
        """Stop the worker; requests still running or waiting end as ``cancelled``."""
        with self.cond:
            self._stop = True
            self.cond.notify()
        if self._thread is not None:
            self._thread.join()
        with self.cond:
            left, self.active, self.waiting = [*self.active, *self.waiting], [], collections.deque()
        for job in left:
            job.slot = None
            self._end(job, "cancelled")

    def _ensure_thread(self) -> None:
        with self.cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edgeship-llm-scheduler", daemon=True)
                self._thread.start()

    # --- the scheduler thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._stop and not self.waiting and not self.active:
                    timeout = self._idle_timeout()
                    self.cond.wait(timeout)
                    self.unload_if_idle()
                if self._stop:
                    return
            self.turn()

    def _idle_timeout(self) -> float | None:
        if self.settings.idle_unload_s is None or self.model is None:
            return None
        return max(0.0, self.last_activity + self.settings.idle_unload_s - self.clock())

    def unload_if_idle(self) -> bool:
        """Release the model when nothing has run for ``idle_unload_s`` (it reloads on the next request)."""
        s = self.settings
        if s.idle_unload_s is None or self.model is None or self.active or self.waiting:
            return False
        if self.clock() - self.last_activity < s.idle_unload_s:
            return False
        self.slots, self.model = [], None
        return True

    def _admit(self) -> None:
        if self.model is None:
            self.model = self.opener()
            self.loads += 1
            context = min(self.settings.context, self.model.context_length)
            self.slots = [_Slot(self.model, context) for _ in range(self.settings.parallel)]
        while self.waiting and len(self.active) < len(self.slots):
            with self.cond:
                job = self.waiting.popleft()
            if job.cancelled.is_set():
                self._end(job, "cancelled")
                continue
            free = [s for s in self.slots if all(j.slot is not s for j in self.active)]
            slot = max(free, key=lambda s: _common_prefix(s.history, job.prompt_ids))
            job.slot = slot
            try:
                slot.start(job)
            except Exception as exc:  # onnxruntime-genai raises RuntimeError
                job.slot, slot.generator, slot.history = None, None, []
                self._end(job, f"error: {str(exc).splitlines()[0]}")
                continue
            self.active.append(job)

    def turn(self) -> None:
        """One step for every active request; admits waiting ones into free slots first."""
        self._admit()
        for job in list(self.active):
            try:
                done = self._step(job)
            except Exception as exc:  # a failed step ends that request, not the server
                done = f"error: {str(exc).splitlines()[0]}"
                job.slot.generator, job.slot.history = None, []
            if done:
                self.active.remove(job)
                self._flush(job, final=True)
                job.slot = None
                self._end(job, done)
        self.last_activity = self.clock()

    def _end(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        self.on_step("finish", job)
        job.finish(reason)

    def _step(self, job: Job) -> str:
        slot = job.slot
        if job.cancelled.is_set():
            slot.history = list(slot.history)  # the cache stays valid for what was appended
            return "cancelled"
        if job.pending:  # one chunk of the prompt
            chunk, job.pending = job.pending[: self.settings.prefill_chunk], job.pending[self.settings.prefill_chunk:]
            slot.generator.append_tokens(chunk)
            slot.history += chunk
            self.on_step("prefill", job)
            return ""
        if slot.generator.is_done():
            return "stop"
        slot.generator.generate_next_token()
        token = int(slot.generator.get_next_tokens()[0])
        slot.history.append(token)
        job.tokens.append(token)
        if job.first_token_at is None:
            job.first_token_at = self.clock()
        job.completion_tokens += 1
        self.on_step("token", job)
        if slot.generator.is_done() and token in self._eos():
            return "stop"
        job.text += slot.stream.decode(token)
        if self._stopped(job):
            return "stop"
        self._flush(job, final=False)
        if job.completion_tokens >= job.max_tokens or len(slot.history) >= slot.context:
            return "length"
        return ""

    def _eos(self) -> set[int]:
        eos = self.model.config.get("eos_token_id")
        return set(eos) if isinstance(eos, list) else {int(eos)} if eos is not None else set()

    @staticmethod
    def _stopped(job: Job) -> bool:
        hits = [job.text.find(s, max(0, job.sent - len(s))) for s in job.stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            job.text = job.text[: min(hits)]
            return True
        return False

    @staticmethod
    def _flush(job: Job, final: bool) -> None:
        """Emit the text not sent yet, holding back what could still become a stop sequence."""
        hold = 0 if final else max((len(s) - 1 for s in job.stop), default=0)
        end = max(job.sent, len(job.text) - hold)
        if end > job.sent:
            job.emit(job.text[job.sent:end])
            job.sent = end


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatModel:
    """A verified LLM bundle, ready to chat (the Python API of ``edgeship chat`` and of the server)."""

    def __init__(self, folder: Path | str, manifest: dict[str, Any] | None = None,
                 settings: ChatSettings = ChatSettings(), clock: Callable[[], float] = time.monotonic,
                 on_step: Callable[[str, Job], None] | None = None, cleanup: Path | None = None) -> None:
        from edgeship.engines.ort_genai import GenAIModel

        self.folder, self.manifest, self.settings = Path(folder), manifest or {}, settings
        self._cleanup = cleanup
        self.tokenizer_model = GenAIModel(self.folder, prefill_chunk=settings.prefill_chunk)  # tokenizer + template
        first = [self.tokenizer_model]
        self.context_length = min(settings.context, self.tokenizer_model.context_length)
        self.scheduler = Scheduler(lambda: first.pop() if first else GenAIModel(self.folder, settings.prefill_chunk),
                                   settings, clock, on_step)

    @classmethod
    def open(cls, bundle: Path | str, trusted_keys: list[Any], decrypt_key: bytes | None = None,
             state_dir: Path | str | None = None, allow_downgrade: bool = False,
             settings: ChatSettings = ChatSettings(), record: bool = True, **kwargs: Any) -> "ChatModel":
        """Verify (streaming), unpack into a private temporary folder, self-test, and open."""
        from edgeship.bundle.llm import check_selftest, verify_llm_bundle

        verified = verify_llm_bundle(bundle, trusted_keys, decrypt_key, state_dir=state_dir,
                                     allow_downgrade=allow_downgrade, record=record)
        try:
            chat = cls(verified.folder, verified.manifest, settings, cleanup=verified.folder, **kwargs)
            check_selftest(verified, chat.tokenizer_model)
        except BaseException:
            import shutil

            shutil.rmtree(verified.folder, ignore_errors=True)
            raise
        return chat

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.folder.name))

    def close(self) -> None:
        self.scheduler.close()
        if self._cleanup is not None:
            import shutil

            shutil.rmtree(self._cleanup, ignore_errors=True)

    def __enter__(self) -> "ChatModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- prompts --------------------------------------------------------------------------------
    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        import json

        bad = [m for m in messages if not isinstance(m, dict) or not isinstance(m.get("content"), str)
               or m.get("role") not in ("system", "user", "assistant")]
        if not messages or bad:
            raise ConfigError("messages must be a non-empty list of {role: system|user|assistant, content: text}.")
        template = self.manifest.get("chat_template")
        tok = self.tokenizer_model.tokenizer
        if template:
            return tok.apply_chat_template(json.dumps(messages), template_str=template, add_generation_prompt=True)
        return tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer_model.encode(text)

    def check_fits(self, prompt_ids: Sequence[int], max_tokens: int | None) -> int:
        """The max_tokens to use (default, capped); PromptTooLong when the prompt leaves no room."""
        s = self.settings
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}.")
        wanted = min(max_tokens or s.default_max_tokens, s.max_tokens)
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise PromptTooLong(f"the prompt is {len(prompt_ids)} tokens; this model's context here is "
                                f"{self.context_length} tokens, which leaves no room to answer. Shorten the prompt.")
        return min(wanted, room)

    # --- generation -----------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], emit: Callable[[str], None], finish: Callable[[str], None],
               max_tokens: int | None = None, sampling: Any = None, stop: Sequence[str] = ()) -> Job:
        if len(stop) > 4 or any(not isinstance(s, str) or not s or len(s) > 64 for s in stop):
            raise ConfigError("stop takes at most 4 non-empty strings of at most 64 characters.")
        job = Job(list(prompt_ids), self.check_fits(prompt_ids, max_tokens), emit, finish, sampling, tuple(stop))
        self.scheduler.submit(job)
        return job

    def stream(self, prompt: str | list[int], max_tokens: int | None = None, sampling: Any = None,
               stop: Sequence[str] = ()) -> Iterator[str]:
        """Text pieces as they are generated; raises if the generation ends in an error."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        pieces: queue.Queue[tuple[str, str]] = queue.Queue()
        job = self.submit(ids, lambda t: pieces.put(("text", t)), lambda r: pieces.put(("end", r)), max_tokens,
                          sampling, stop)
        try:
            while True:
                kind, value = pieces.get()
                if kind == "end":
                    if value.startswith("error"):
                        raise EdgeshipError(f"generation failed: {value[7:]}")
                    self.last_finish = value
                    return
                yield value
        finally:
            job.cancel()

    def stream_chat(self, messages: list[dict[str, str]], **kwargs: Any) -> Iterator[str]:
        return self.stream(self.chat_prompt(messages), **kwargs)

    def chat(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        return "".join(self.stream_chat(messages, **kwargs))
