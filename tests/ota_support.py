"""What the over-the-air tests share: a repository served over real HTTP (with overrides to play
attacker), keys and bundles, and agents run as real subprocesses."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from edgeship.bundle import generate_keys, load_public_keys, verify_bundle
from edgeship.bundle.pack import pack
from edgeship.ota.repository import RepoSettings, init_repo, publish

__all__ = ["CLI", "RepoServer", "keys", "bundles", "make_repo", "repo_with", "agent_cmd", "run_agent",
           "paused_agent", "agent_state", "serving", "assert_refused", "at_v1"]

CLI = [sys.executable, "-m", "edgeship.cli"]


class RepoServer:
    """The repository's public folder over real HTTP, with per-path overrides to play attacker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, object] = {}  # path -> bytes to serve instead, or "endless"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = urllib.parse.unquote(self.path.split("?")[0])
                override = server.overrides.get(path)
                if override == "endless":
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(20000):  # 640 MB at most, unless the client hangs up first
                            self.wfile.write(b"{" * 32768)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if isinstance(override, bytes):
                    data = override
                else:
                    file = (server.root / path.lstrip("/")).resolve()
                    if server.root.resolve() not in file.parents or not file.is_file():
                        self.send_error(404)
                        return
                    data = file.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ota-keys")
    ours = generate_keys(root / "ours", content_key=True)
    ours["other_private"] = root / "theirs" / "signing.key"
    generate_keys(root / "theirs")
    return ours


@pytest.fixture(scope="module")
def bundles(keys, cnn_onnx, tmp_path_factory, break_selftest):
    root = tmp_path_factory.mktemp("ota-bundles")
    made = {v: pack(cnn_onnx, "digits", v, keys["private"], root / f"d{v}.edgeship", encrypt_key=keys["content"])
            for v in (1, 2, 3, 4)}
    made["untrusted"] = pack(cnn_onnx, "digits", 5, keys["other_private"], root / "untrusted.edgeship",
                             encrypt_key=keys["content"])
    plain = pack(cnn_onnx, "digits", 5, keys["private"], root / "plain5.edgeship")
    made["bad-selftest"] = break_selftest(plain, root / "bad5.edgeship", keys["private"])
    return made


def repo_with(tmp_path: Path, *versions_of, settings: RepoSettings | None = None) -> tuple[Path, RepoServer]:
    repo = tmp_path / "repo"
    init_repo(repo, settings)
    for bundle in versions_of:
        publish(repo, bundle)
    return repo, RepoServer(repo / "public")


@pytest.fixture
def make_repo(tmp_path):
    """A repository with the given bundles published, served over HTTP until the test ends."""
    servers: list[RepoServer] = []

    def make(*bundles_, settings: RepoSettings | None = None) -> tuple[Path, RepoServer]:
        repo, server = repo_with(tmp_path, *bundles_, settings=settings)
        servers.append(server)
        return repo, server

    yield make
    for server in servers:
        server.close()


def agent_cmd(server: RepoServer, repo: Path, state: Path, keys, *extra: str, device: str = "dev-1",
               model: str = "digits") -> list[str]:
    return CLI + ["agent", "--repo-url", server.url, "--root", str(repo / "root.json"), "--state-dir", str(state),
                  "--model", model, "--trust", str(keys["public"]), "--decrypt-key", str(keys["content"]),
                  "--device-id", device, "--once", *extra]


def run_agent(server: RepoServer, repo: Path, state: Path, keys, *extra: str, env: dict | None = None,
           device: str = "dev-1", model: str = "digits") -> subprocess.CompletedProcess:
    return subprocess.run(agent_cmd(server, repo, state, keys, *extra, device=device, model=model), capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def paused_agent(server: RepoServer, repo: Path, state: Path, keys, step: str) -> subprocess.Popen:
    """An agent process stopped inside ``step`` (EDGESHIP_AGENT_PAUSE), once it says so."""
    proc = subprocess.Popen(agent_cmd(server, repo, state, keys), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "EDGESHIP_AGENT_PAUSE": step})
    line = proc.stdout.readline()
    assert line.strip() == f"paused at {step}", line + proc.stderr.read()
    return proc


def agent_state(state: Path) -> dict:
    return json.loads((state / "agent.json").read_text())


def serving(state: Path, keys) -> int:
    """The version that `current` points at, after a full verification (signature, digests, decryption)."""
    return verify_bundle(state / "current" / "bundle.edgeship", load_public_keys(keys["public"]),
                         keys["content"].read_bytes()).version


def assert_refused(done: subprocess.CompletedProcess, state: Path, keys, pattern: str, version: int = 1) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(pattern, done.stdout), done.stdout
    assert serving(state, keys) == version
    assert re.search(pattern, agent_state(state)["last_error"])  # the reason is recorded


@pytest.fixture(scope="module")
def at_v1(tmp_path_factory, bundles, keys):
    """A repository with v1, a device state directory that committed v1, then v2 published."""
    root = tmp_path_factory.mktemp("at-v1")
    repo, server = repo_with(root, bundles[1])
    template = root / "template-state"
    assert run_agent(server, repo, template, keys).returncode == 0
    publish(repo, bundles[2])
    yield repo, server, template
    server.close()
