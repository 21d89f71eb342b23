"""The agent never stops: a full disk, a broken health server, a malformed signed index and a
damaged state file each end with the previous model serving, the reason recorded, and the
next check going ahead (with backoff while failures last)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeship.bundle import load_public_keys
from edgeship.ota.agent import MAX_BACKOFF_S, Agent, AgentConfig
from edgeship.ota.repository import _Repo, publish
from ota_support import (CLI, agent_state, at_v1, bundles, keys, make_repo, run_agent, serving)  # noqa: F401


def _copy_state(template: Path, to: Path) -> Path:
    shutil.copytree(template, to, symlinks=True)
    return to


def _leftovers(state: Path) -> list[Path]:
    return [*state.glob("downloads/*"), *state.glob("slots/*/.bundle.*")]


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on ``disk``."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.truncate(0)
        remaining = max(0, free - leave)
        while remaining:
            chunk = min(remaining, 1 << 20)
            f.write(b"\0" * chunk)
            remaining -= chunk
    return filler


@pytest.mark.parametrize("room, step", [(0.5, "download"), (1.6, "install"), (0.0, "download")])
def test_a_full_disk_keeps_the_old_model_and_the_next_check_succeeds(room, step, small_disk, at_v1, keys, bundles):
    repo, server, template = at_v1
    state = _copy_state(template, small_disk / "state")
    size = bundles[2].stat().st_size
    filler = _fill(small_disk, int(room * size))
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 1 and f"update refused at {step}" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stdout.strip().splitlines()) == 1
    assert serving(state, keys) == 1 and not _leftovers(state)
    if room:  # with a little room the reason is recorded; with none it is only said and reported
        assert agent_state(state)["last_error"].startswith(f"{step}: ")
    filler.unlink()  # space again: the same release goes in, it was not blamed for the disk
    again = run_agent(server, repo, state, keys)
    assert again.returncode == 0 and "updated to v2" in again.stdout, again.stdout + again.stderr
    assert serving(state, keys) == 2


class BrokenHealth:
    """A server that takes the load request and reports the new version, then answers inference badly."""

    def __init__(self, answer: bytes | None, status: int = 200) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, json.dumps({"name": "digits", "versions": ["2"]}).encode())

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if "/load" in self.path:
                    self._send(200, b"{}")
                elif outer.answer is None:  # hang up without an answer
                    self.connection.shutdown(2)
                else:
                    self._send(outer.status, outer.answer)

        self.answer, self.status = answer, status
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("answer, status", [
    (b"<html>not json</html>", 200), (b"[]", 200), (b'{"outputs": []}', 200), (b'{"outputs": [{"data": "abc"}]}', 200),
    (b'{"outputs": [{"data": [1, 2, 3]}]}', 200), (b'{"outputs": [{"data": [[1], [2, 3]]}]}', 200),
    (b'{"error": "boom"}', 500), (None, 200),
])
def test_an_unexpected_health_answer_rolls_back_and_is_recorded(answer, status, at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = _copy_state(template, tmp_path / "state")
    health = BrokenHealth(answer, status)
    try:
        done = run_agent(server, repo, state, keys, "--health-url", health.url)
    finally:
        health.close()
    assert done.returncode == 1 and "failed its health" in done.stdout and "rolled back to v1" in done.stdout, \
        done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert serving(state, keys) == 1 and agent_state(state)["last_error"].startswith("health: ")


def _publish_index(repo: Path, model: str, channel: str, content: bytes) -> None:
    """A channel index signed by the repository's own keys, whatever it holds (a buggy publisher)."""
    r = _Repo(repo)
    targets = r.load("targets")
    target = f"{model}/{channel}.json"
    targets.signed.targets[target] = r.add_target_file(target, content)
    r.release(targets)


@pytest.mark.parametrize("index", [
    b"[]", b'"x"', b'{"releases": "x"}', b"not json", b'{"releases": [{"version": "two", "target": 1, "rollout": 100}]}',
    b'{"releases": [{"version": 3, "target": "../../../etc/passwd", "rollout": 100}]}',
    b'{"releases": [{"version": 1e400, "rollout": 100}]}', b'{"releases": [null, 5, {"rollout": 100}]}',
])
def test_a_malformed_signed_index_is_refused_and_polling_goes_on_with_backoff(index, bundles, keys, make_repo,
                                                                             tmp_path):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert run_agent(server, repo, state, keys).returncode == 0
    _publish_index(repo, "digits", "stable", index)
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 1 and "update refused at download" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and serving(state, keys) == 1

    config = AgentConfig(server.url, repo / "root.json", state, "digits", load_public_keys(keys["public"]),
                         keys["content"].read_bytes(), device_id="dev-1")
    waits: list[float] = []
    with Agent(config) as agent:  # the loop of `agent --interval 60`, its sleeps recorded instead of slept
        result = agent.run(60, sleep=waits.append, checks=4)
        assert result.status == "refused" and agent.state["last_error"].startswith("download: ")
        assert len(waits) == 3 and waits[0] < waits[1] < waits[2] <= MAX_BACKOFF_S * 1.1  # backoff
        _publish_index(repo, "digits", "stable", b'{"model": "digits", "channel": "stable", "releases": []}')
        publish(repo, bundles[3])  # the publisher mended: a good release again
        waits.clear()
        assert agent.run(60, sleep=waits.append, checks=2).status in ("updated", "up-to-date")
        assert 54 <= waits[0] <= 66  # back to the interval after a good check
    assert serving(state, keys) == 3


def test_a_damaged_state_file_is_rebuilt_from_the_slots(at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = _copy_state(template, tmp_path / "state")
    (state / "agent.json").write_bytes(b"\x00garbage{")
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 0 and "updated to v2 (slot b)" in done.stdout, done.stdout + done.stderr
    assert (state / "agent.json.damaged").read_bytes() == b"\x00garbage{"
    assert serving(state, keys) == 2 and agent_state(state)["versions"] == {"a": 1, "b": 2}


@pytest.mark.parametrize("interval", ["nan", "-1", "0", "inf", "1e12"])
def test_nonsense_intervals_are_refused_with_one_line(interval, keys, tmp_path):
    done = subprocess.run(CLI + ["agent", "--repo-url", "http://127.0.0.1:9", "--root", str(tmp_path / "r.json"),
                                 "--state-dir", str(tmp_path / "s"), "--model", "digits", "--trust",
                                 str(keys["public"]), "--interval", interval], capture_output=True, text=True)
    assert done.returncode == 2 and "--interval" in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
        done.stderr
    assert not (tmp_path / "s").exists()


