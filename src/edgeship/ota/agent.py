"""The device agent: TUF-verified updates into A/B slots, self-test, health check, commit or roll back.

State directory (``--state-dir``)::

    current -> slots/a            the slot being served (a symlink, switched by atomic rename)
    slots/a/bundle.edgeship       one verified bundle per slot
    slots/b/bundle.edgeship
    agent.json                    active slot, versions per slot, pending update, last error, history
    accepted-versions.json        anti-rollback: the highest version committed per model
    device-id                     this device's id (generated once, unless --device-id is given)
    tuf/                          python-tuf's trusted metadata cache
    downloads/                    verified-by-TUF downloads, deleted after install

One update runs these steps: refresh the TUF metadata and read the channel index (download),
check the bundle (verify: signature, digests, anti-rollback, decryption), copy it into the
inactive slot (install), point ``current`` at it (switch), open it with its self-test
(self-test), ask the running server to serve it (health), and record it (commit). A failed
self-test or health check switches back. Every state change is written to a temporary file,
fsynced and renamed, and ``agent.json`` records a pending update before the switch; an agent
killed at any point finds ``current`` on a verified slot, and on restart finishes or undoes
the pending update.

Tests pause the agent inside a step with ``EDGESHIP_AGENT_PAUSE=<step>`` (it prints
``paused at <step>`` and sleeps) to kill it there.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeship.core.files import atomic_write_bytes, fsync_dir
from edgeship.bundle.format import BundleError, matches_reference, verify_bundle
from edgeship.bundle.llm import LLM_FORMAT, bundle_format, verify_llm_bundle
from edgeship.core.names import BUNDLE_SUFFIX, StateDir
from edgeship.core.rollback import record_accepted
from edgeship.ota.channel import channel_target, check_index
from edgeship.errors import ConfigError, EdgeshipError

__all__ = ["AgentConfig", "Agent", "UpdateResult", "STEPS", "rollout_bucket", "backoff_s"]

STEPS = ("download", "verify", "install", "switch", "self-test", "health", "commit")
SLOTS = StateDir.SLOT_NAMES
log = logging.getLogger(__name__)
HISTORY = 50
MAX_BACKOFF_S = 3600.0
MAX_ANSWER_BYTES = 64 << 20  # a health answer larger than this is not the self-test's output


def rollout_bucket(device_id: str, model: str) -> float:
    """A stable number in [0, 100) for this device and model: a release with rollout R reaches
    the devices whose bucket is below R, so raising R only ever adds devices."""
    digest = hashlib.sha256(f"{device_id}/{model}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10000 / 100.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def backoff_s(interval: float, failures: int) -> float:
    """The wait before the next check after ``failures`` failed checks in a row: the interval,
    doubled per failure, capped at the larger of the interval and an hour."""
    return min(interval * 2 ** min(failures, 20), max(interval, MAX_BACKOFF_S))


def _pause(step: str) -> None:
    if os.environ.get("EDGESHIP_AGENT_PAUSE") == step:
        print(f"paused at {step}", flush=True)
        time.sleep(3600)


@dataclass(frozen=True)
class AgentConfig:
    repo_url: str
    root: Path  # the repository's root.json that this device shipped with
    state_dir: Path
    model: str
    trusted_keys: list[Any]  # bundle signing keys
    decrypt_key: bytes | None = None
    channel: str = "stable"
    device_id: str | None = None
    health_url: str | None = None  # the local `edgeship serve` that serves this state directory
    fleet_url: str | None = None
    fleet_token: str | None = None  # this device's token, from `edgeship fleet enroll DEVICE`
    health_timeout_s: float = 30.0
    threads: int = 1


@dataclass
class UpdateResult:
    status: str  # up-to-date | updated | refused | rolled-back | waiting
    version: int | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("up-to-date", "updated", "waiting")


class _StepError(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason)
        self.step, self.reason = step, reason


class Agent:
    """Keeps one model on this device up to date from a TUF repository."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.dir = Path(config.state_dir)
        self.layout = StateDir(self.dir)
        self.step = "start"  # the update step under way, named in last_error when something fails
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in (self.layout / StateDir.TUF, self.layout / StateDir.DOWNLOADS,
                    *(self.layout.slot(s) for s in StateDir.SLOT_NAMES)):
            sub.mkdir(parents=True, exist_ok=True)
        try:
            self.root_bytes = Path(config.root).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --root {str(config.root)!r}: {exc.strerror}; it is the repository's "
                              "root.json that devices ship with.") from None
        self._lock = self._take_lock()
        self.device_id = config.device_id or self._device_id()
        self.state = self._load_state()

    def _take_lock(self) -> Any:
        """One agent per state directory (python-tuf's cache is single-instance too). The kernel
        drops the lock when the process dies, even by kill -9."""
        import fcntl

        handle = open(self.layout / StateDir.LOCK, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(f"another agent is running on {str(self.dir)!r}; run one agent per state directory.") from None
        return handle

    def close(self) -> None:
        """Release the state directory, so that another agent (or process) may take it."""
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------
    def _device_id(self) -> str:
        path = self.layout / StateDir.DEVICE_ID
        if path.is_file():
            return path.read_text().strip()
        device_id = f"dev-{uuid.uuid4().hex[:12]}"
        atomic_write_bytes(path, device_id.encode())
        return device_id

    def _fresh_state(self) -> dict[str, Any]:
        return {"model": self.config.model, "active": None, "versions": {}, "pending": None,
                "last_error": None, "failed_versions": [], "history": []}

    def _load_state(self) -> dict[str, Any]:
        path = self.layout / StateDir.AGENT_STATE
        if not path.is_file():
            return self._fresh_state()
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or not isinstance(state.get("versions"), dict) \
                    or not isinstance(state.get("history"), list) or not isinstance(state.get("failed_versions"), list):
                raise ValueError("not an agent state")
            return state
        except (ValueError, OSError) as exc:  # damaged by the disk or a person: rebuild it, never stop
            return self._rebuilt_state(path, exc)

    def _rebuilt_state(self, path: Path, exc: Exception) -> dict[str, Any]:
        """State rebuilt from what the slots hold (``current`` only ever points at a verified slot);
        the damaged file is kept beside it for a person to look at."""
        from edgeship.bundle.format import read_manifest

        os.replace(path, path.with_name(f"{path.name}.damaged"))
        state = self._fresh_state()
        for slot in SLOTS:
            try:
                state["versions"][slot] = int(read_manifest(self.bundle_path(slot), self.config.trusted_keys)["version"])
            except (EdgeshipError, OSError):
                continue
        active = self.current_slot()
        state["active"] = active if active in state["versions"] else None
        state["last_error"] = f"state: {path.name} was unreadable ({_first_line(exc)}); rebuilt from the slots"
        log.warning("%s", state["last_error"])
        return state

    def _save_state(self) -> None:
        self.state["history"] = self.state["history"][-HISTORY:]
        atomic_write_bytes(self.layout / StateDir.AGENT_STATE, json.dumps(self.state, indent=2).encode())

    def _event(self, event: str, version: int | None, detail: str = "") -> None:
        self.state["history"].append({"time": _now(), "event": event, "version": version, "detail": detail})

    def bundle_path(self, slot: str) -> Path:
        return self.layout.slot_bundle(slot)

    def current_slot(self) -> str | None:
        link = self.layout.current
        if not link.is_symlink():
            return None
        target = os.readlink(link)
        slot = Path(target).name
        return slot if slot in SLOTS else None

    def _switch(self, slot: str, pause: bool = False) -> None:
        tmp = self.dir / ".current.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"{StateDir.SLOTS}/{slot}", tmp)
        os.replace(tmp, self.layout.current)  # atomic: readers see the old slot or the new one
        if pause:
            _pause("switch")
        fsync_dir(self.dir)

    @property
    def active_version(self) -> int | None:
        slot = self.state.get("active")
        return self.state["versions"].get(slot) if slot else None

    # -- recovery ----------------------------------------------------------------------
    def recover(self) -> str | None:
        """Finish or undo an update interrupted by a crash; returns what was done."""
        for leftover in [*self.dir.glob(f"{StateDir.SLOTS}/*/.{StateDir.BUNDLE}.*"),
                         *(self.layout / StateDir.DOWNLOADS).iterdir()]:
            if leftover.is_file():
                leftover.unlink()
        pending = self.state.get("pending")
        current = self.current_slot()
        if pending is None:
            if current != self.state.get("active") and self.state.get("active"):
                self._switch(self.state["active"])  # current drifted from the committed slot
                return f"restored current to committed slot {self.state['active']}"
            return None
        slot, version = pending["slot"], pending["version"]
        if current != slot:  # killed before the switch: the new slot was never live
            self.state["pending"] = None
            self._event("interrupted", version, f"update interrupted before the switch (step {pending.get('step')})")
            self._save_state()
            return f"discarded an update to v{version} interrupted before the switch"
        try:  # killed after the switch: finish the checks, then commit or roll back
            self._check_live(slot, version)
        except _StepError as exc:
            self._roll_back(slot, version, exc)
            return f"rolled back interrupted update to v{version}: {exc.reason}"
        self._commit(slot, version)
        return f"finished interrupted update to v{version}"

    # -- one check ---------------------------------------------------------------------
    def check_once(self) -> UpdateResult:
        """One check. It never raises for a failure of the update: whatever goes wrong (the network,
        the repository, the bundle, the disk, the server's answer), the previous model keeps
        serving and the reason is kept in ``last_error`` and reported."""
        recovered, self.step = None, "recover"
        try:
            recovered = self.recover()
            self.step = "download"
            result = self._update()
        except _StepError as exc:
            result = self._refused(exc)
        except Exception as exc:  # noqa: BLE001 - the agent outlives any failure; the reason is recorded
            log.debug("update failed at %s", self.step, exc_info=True)
            result = self._refused(_StepError(self.step, _first_line(exc)))
        if recovered:
            result.details["recovered"] = recovered
        self.report(result)
        return result

    def _refused(self, exc: _StepError) -> UpdateResult:
        self._clean_downloads()
        self.state["last_error"] = f"{exc.step}: {exc.reason}"
        self._event("refused", None, self.state["last_error"])
        try:
            self._save_state()
        except OSError as save_error:  # a full disk, say: the reason still goes to the fleet and the log
            log.warning("cannot record the agent's state: %s", save_error)
        return UpdateResult("refused", self.active_version, f"update refused at {exc.step}: {exc.reason}")

    def _clean_downloads(self) -> None:
        for leftover in (self.layout / StateDir.DOWNLOADS).glob("*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
            else:
                shutil.rmtree(leftover, ignore_errors=True)

    def _choose(self, index: dict[str, Any]) -> tuple[dict[str, Any] | None, list[int]]:
        """(the newest release for this device that has not failed here, newer ones that did)."""
        try:
            releases = check_index(index, self.config.model)
        except ValueError as exc:
            raise _StepError("download", f"the signed channel index is malformed: {exc}") from None
        bucket = rollout_bucket(self.device_id, self.config.model)
        eligible = [r for r in releases if bucket < r["rollout"]]
        failed = set(self.state["failed_versions"])
        good = [r for r in eligible if int(r["version"]) not in failed]
        best = max(good, key=lambda r: int(r["version"]), default=None)
        floor = int(best["version"]) if best else 0
        skipped = sorted(int(r["version"]) for r in eligible if int(r["version"]) in failed and int(r["version"]) > floor)
        return best, skipped

    def _update(self) -> UpdateResult:
        """One check: find the newest release meant for this device, download, verify, switch, check, commit."""
        found = self._download()
        if isinstance(found, UpdateResult):  # nothing newer
            return found
        download, version = found
        self._verify_download(download, version)
        return self._switch_and_check(download, version)

    def _download(self) -> UpdateResult | tuple[Path, int]:
        """Refresh the TUF metadata and download the release to take, or say why there is none."""
        from tuf.ngclient import Updater

        cfg = self.config
        base = cfg.repo_url.rstrip("/")
        try:
            updater = Updater(str(self.layout / StateDir.TUF), f"{base}/metadata/", str(self.layout / StateDir.DOWNLOADS),
                              f"{base}/targets/", bootstrap=self.root_bytes)
            updater.refresh()
            index_info = updater.get_targetinfo(channel_target(cfg.model, cfg.channel))
            if index_info is None:
                return UpdateResult("up-to-date", self.active_version,
                                    f"{cfg.model} has no release on {cfg.channel} yet")
            release, skipped = self._choose(json.loads(Path(updater.download_target(index_info)).read_bytes()))
            active = self.active_version or 0
            if release is None or int(release["version"]) <= active:
                note = f" (v{', v'.join(map(str, skipped))} failed on this device before)" if skipped else ""
                return UpdateResult("up-to-date", self.active_version,
                                    (f"{cfg.model} is up to date at v{active}" if active else
                                     "no release for this device yet") + note)
            version = int(release["version"])
            info = updater.get_targetinfo(str(release["target"]))
            if info is None:
                raise _StepError("download", f"the index names {release['target']!r}, which the signed targets lack")
            _pause("download")
            target = self.layout / StateDir.DOWNLOADS / f"{cfg.model}-{version}{BUNDLE_SUFFIX}"
            return Path(updater.download_target(info, str(target))), version
        except _StepError:
            raise
        except Exception as exc:  # TUF refused metadata or a download: expired, rolled back, mixed, too long, bad hash
            raise _StepError("download", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None

    def _verify_download(self, download: Path, version: int) -> None:
        """The downloaded bundle, checked as `verify` does; a refused version is remembered and skipped later."""
        cfg = self.config
        self.step = "verify"
        _pause("verify")
        try:
            if bundle_format(download) == LLM_FORMAT:  # streamed into a scratch folder, then discarded
                scratch = self.layout / StateDir.DOWNLOADS / ".verify"
                try:
                    verified = verify_llm_bundle(download, cfg.trusted_keys, cfg.decrypt_key, scratch, self.dir,
                                                 record=False)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            else:
                verified = verify_bundle(download, cfg.trusted_keys, cfg.decrypt_key, self.dir, record=False)
        except BundleError as exc:
            download.unlink(missing_ok=True)
            self._remember_failure(version)
            raise _StepError("verify", str(exc)) from None
        if verified.name != cfg.model or verified.version != version:
            download.unlink(missing_ok=True)
            raise _StepError("verify", f"the bundle is {verified.name} v{verified.version}, the index promised "
                                       f"{cfg.model} v{version}")

    def _switch_and_check(self, download: Path, version: int) -> UpdateResult:
        """Install into the inactive slot, record the pending switch, switch, self-test and health-check;
        commit, or roll back with the reason."""
        slot = next(s for s in SLOTS if s != self.state.get("active")) if self.state.get("active") else "a"
        self.step = "install"
        self._install(download, slot)
        download.unlink(missing_ok=True)
        self.state["pending"] = {"slot": slot, "version": version, "step": "switch", "since": _now()}
        self._save_state()
        previous = self.state.get("active")
        self.step = "switch"
        self._switch(slot, pause=True)
        try:
            self._check_live(slot, version)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the new slot does not stay live
            failure = exc if isinstance(exc, _StepError) else _StepError(self.step, _first_line(exc))
            self._roll_back(slot, version, failure)
            said = f"v{version} failed its {failure.step}: {failure.reason}"
            return UpdateResult("rolled-back", self.active_version,
                                f"{said}; rolled back to v{self.active_version}" if previous else said)
        self._commit(slot, version)
        return UpdateResult("updated", version, f"{self.config.model} updated to v{version} (slot {slot})")

    def _install(self, download: Path, slot: str) -> None:
        """Copy the bundle into the slot in chunks (an LLM bundle is hundreds of megabytes)."""
        half = download.stat().st_size // 2

        def chunks() -> Iterator[bytes]:  # a kill injected at "install" lands mid-write
            done = 0
            with download.open("rb") as f:
                while block := f.read(min(1 << 20, half - done) if done < half else 1 << 20):
                    yield block
                    done += len(block)
                    if done == half:
                        _pause("install")

        atomic_write_bytes(self.bundle_path(slot), chunks())

    def _check_live(self, slot: str, version: int) -> None:
        """Self-test the slot's bundle, then the running server's answer, if there is a server."""
        from edgeship.runtime import Runtime

        self.step = "self-test"
        _pause("self-test")
        cfg = self.config
        if bundle_format(self.bundle_path(slot)) == LLM_FORMAT:
            self._check_chat(slot)
            return
        try:
            runtime = Runtime.open(self.bundle_path(slot), cfg.trusted_keys, cfg.decrypt_key, cfg.threads,
                                   state_dir=self.dir, record=False)
        except BundleError as exc:
            raise _StepError("self-test", str(exc)) from None
        if cfg.health_url:
            self.step = "health"
            _pause("health")
            self._health(runtime, version)

    def _check_chat(self, slot: str) -> None:
        """An LLM bundle: verified by streaming, opened, and asked the self-test prompt: its greedy
        next token must be among the packing machine's top five (the chat health check)."""
        from edgeship.runtime.llm import ChatModel, ChatSettings

        cfg = self.config
        try:
            chat = ChatModel.open(self.bundle_path(slot), cfg.trusted_keys, cfg.decrypt_key, self.dir,
                                  settings=ChatSettings(context=64, parallel=1), record=False)
        except EdgeshipError as exc:
            raise _StepError("self-test", str(exc)) from None
        except Exception as exc:  # the engine refusing a verified model
            raise _StepError("self-test", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        chat.close()
        if cfg.health_url:
            log.info("an LLM bundle's server is restarted to take a new version; no live health request is made")

    def _health(self, runtime: Any, version: int) -> None:
        """Wait until the server reports ``version``, then check its answer to the self-test input."""
        import urllib.error
        import urllib.request

        import numpy as np

        base = self.config.health_url.rstrip("/")
        model = self.config.model
        # ask the server to take up the switched slot now (Triton's repository extension); a server
        # without it notices the switch at its next poll
        load = urllib.request.Request(f"{base}/v2/repository/models/{model}/load", data=b"{}",
                                      headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(load, timeout=60):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 400:
                try:
                    reason = json.loads(exc.read()).get("error", exc.reason)
                except ValueError:
                    reason = exc.reason
                raise _StepError("health", f"the server refused the new bundle: {reason}") from None
        except OSError as exc:  # an older server without the load request: wait for its own poll below
            log.info("load request to %s failed (%s); waiting for the server to poll", base, exc)
        deadline = time.monotonic() + self.config.health_timeout_s
        serving = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/{model}", timeout=5) as response:
                    serving = json.loads(response.read(1 << 20)).get("versions", [])
                if isinstance(serving, list) and str(version) in serving:
                    break
            except (OSError, ValueError, AttributeError) as exc:  # down, restarting, or not an OIP answer yet
                log.debug("health check of %s: %s", base, exc)
            time.sleep(0.2)
        else:
            raise _StepError("health", f"the server at {base} still serves {serving} after "
                                       f"{self.config.health_timeout_s:.0f} s, not v{version}")
        inputs = {k.removeprefix("input."): v for k, v in runtime.bundle.selftest.items() if k.startswith("input.")}
        from edgeship.runtime.protocol import oip_datatype

        body = json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": oip_datatype(v.dtype.name),
                                       "data": v.reshape(-1).tolist()} for k, v in inputs.items()]}).encode()
        request = urllib.request.Request(f"{base}/v2/models/{model}/versions/{version}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        expected = runtime.bundle.selftest["expected"]
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read(MAX_ANSWER_BYTES + 1)
            if len(raw) > MAX_ANSWER_BYTES:
                raise ValueError(f"the answer is over {MAX_ANSWER_BYTES} bytes")
            got = np.asarray(json.loads(raw)["outputs"][0]["data"], dtype=np.float64).reshape(expected.shape)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise _StepError("health", f"the server's inference answer is unusable: {_first_line(exc)}") from None
        tol = runtime.manifest["selftest"]
        if not matches_reference(got, expected, tol):
            raise _StepError("health", "the server's answer to the self-test input differs from the bundle's")

    def _commit(self, slot: str, version: int) -> None:
        self.step = "commit"
        _pause("commit")
        self.state["versions"][slot] = version
        self.state["active"] = slot
        self.state["pending"] = None
        self.state["last_error"] = None
        self._event("committed", version, f"slot {slot}")
        self._save_state()
        record_accepted(self.dir, self.config.model, version)  # anti-rollback follows the commit

    def _roll_back(self, slot: str, version: int, exc: _StepError) -> None:
        previous = self.state.get("active")
        if previous:
            self._switch(previous)
        else:  # nothing to go back to: serve nothing rather than a broken model
            self.layout.current.unlink(missing_ok=True)
        self._remember_failure(version)
        self.state["pending"] = None
        self.state["last_error"] = f"{exc.step}: {exc.reason}"
        self._event("rolled-back", version, self.state["last_error"])
        self._save_state()

    def _remember_failure(self, version: int) -> None:
        if version not in self.state["failed_versions"]:
            self.state["failed_versions"].append(version)
            self._save_state()

    # -- fleet -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        active = self.state.get("active")
        return {"device_id": self.device_id, "model": self.config.model, "channel": self.config.channel,
                "version": self.active_version, "slot": active, "last_error": self.state.get("last_error"),
                "pending": self.state.get("pending")}

    def report(self, result: UpdateResult) -> None:
        if not self.config.fleet_url:
            return
        from edgeship.ota.fleet_client import send_report

        payload = {**self.status(), "health": "ok" if result.ok else result.status, "message": result.message[:2000]}
        payload.pop("pending")
        if payload["last_error"]:
            payload["last_error"] = payload["last_error"][:2000]
        try:
            send_report(self.config.fleet_url, self.config.fleet_token or "", payload)
        except EdgeshipError as exc:  # the fleet service being down or refusing must not stop updates
            log.warning("%s", exc)

    def run(self, interval: float | None, on_result: Any = None, sleep: Any = time.sleep,
            checks: int | None = None) -> UpdateResult:
        """Check once (``interval`` None) or every ``interval`` seconds (+-10% jitter) for ever, or
        ``checks`` times. After a failed check the wait doubles, up to an hour (or the interval, if
        longer), and falls back to the interval after a good one. Nothing an update does stops it."""
        import random

        failures, done = 0, 0
        while True:
            result = self.check_once()
            done += 1
            if on_result is not None:
                on_result(result)
            if interval is None or (checks is not None and done >= checks):
                return result
            failures = 0 if result.ok else failures + 1
            sleep(backoff_s(interval, failures) * random.uniform(0.9, 1.1))
