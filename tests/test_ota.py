"""Over-the-air updates with real processes: a TUF repository served over HTTP on 127.0.0.1,
agents as subprocesses, `edgeship serve` on the agent's state directory, and faults injected
at every step (kill -9, corrupted downloads, untrusted signers, failing self-tests, TUF attacks)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from edgeship.bundle import generate_keys, load_public_keys, verify_bundle
from edgeship.bundle.pack import pack
from edgeship.ota.agent import rollout_bucket
from edgeship.ota.repository import RepoError, RepoSettings, init_repo, publish

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


def _repo(tmp_path: Path, *versions_of, settings: RepoSettings | None = None) -> tuple[Path, RepoServer]:
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
        repo, server = _repo(tmp_path, *bundles_, settings=settings)
        servers.append(server)
        return repo, server

    yield make
    for server in servers:
        server.close()


def _agent_cmd(server: RepoServer, repo: Path, state: Path, keys, *extra: str, device: str = "dev-1",
               model: str = "digits") -> list[str]:
    return CLI + ["agent", "--repo-url", server.url, "--root", str(repo / "root.json"), "--state-dir", str(state),
                  "--model", model, "--trust", str(keys["public"]), "--decrypt-key", str(keys["content"]),
                  "--device-id", device, "--once", *extra]


def _agent(server: RepoServer, repo: Path, state: Path, keys, *extra: str, env: dict | None = None,
           device: str = "dev-1", model: str = "digits") -> subprocess.CompletedProcess:
    return subprocess.run(_agent_cmd(server, repo, state, keys, *extra, device=device, model=model), capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def _paused_agent(server: RepoServer, repo: Path, state: Path, keys, step: str) -> subprocess.Popen:
    """An agent process stopped inside ``step`` (EDGESHIP_AGENT_PAUSE), once it says so."""
    proc = subprocess.Popen(_agent_cmd(server, repo, state, keys), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "EDGESHIP_AGENT_PAUSE": step})
    line = proc.stdout.readline()
    assert line.strip() == f"paused at {step}", line + proc.stderr.read()
    return proc


def _state(state: Path) -> dict:
    return json.loads((state / "agent.json").read_text())


def _serving(state: Path, keys) -> int:
    """The version that `current` points at, after a full verification (signature, digests, decryption)."""
    return verify_bundle(state / "current" / "bundle.edgeship", load_public_keys(keys["public"]),
                         keys["content"].read_bytes()).version


def test_repository_layout_and_publish_checks(tmp_path, bundles, keys):
    repo = tmp_path / "repo"
    root = init_repo(repo)
    assert json.loads(root.read_text())["signed"]["_type"] == "root"
    assert all(oct(p.stat().st_mode)[-3:] == "600" for p in (repo / "keys").iterdir())
    assert not list((repo / "public").rglob("*.key"))  # nothing private in what gets served
    with pytest.raises(RepoError, match="already holds a repository"):
        init_repo(repo)
    publish(repo, bundles[2], trusted_keys=load_public_keys(keys["public"]))
    with pytest.raises(RepoError, match="not newer than v2"):
        publish(repo, bundles[1])
    from edgeship.bundle import BundleError

    with pytest.raises(BundleError, match="does not match any trusted key"):
        publish(repo, bundles["untrusted"], trusted_keys=load_public_keys(keys["public"]))
    done = subprocess.run(CLI + ["publish", str(bundles[3]), "--repo", str(repo), "--channel", "nightly"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "'nightly' is not one of 'stable', 'canary'" in done.stderr
    versions = json.loads((repo / "repo.json").read_text())["versions"]
    assert versions == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}
    served = [p for p in (repo / "public").rglob("*") if p.is_file()]
    assert served and all(oct(p.stat().st_mode)[-3:] == "644" for p in served), "a web server must read them"
    assert oct(root.stat().st_mode)[-3:] == "644"


def test_update_commit_rollout_and_fleet_status(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    fleet = None
    try:
        port = _free_port()
        fleet = subprocess.Popen(CLI + ["fleet", "serve", "--db", str(tmp_path / "fleet.sqlite"), "--port", str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fleet_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{fleet_url}/v1/devices")
        # two devices, one inside a 50% rollout and one outside it
        inside = next(f"dev-{i}" for i in range(100) if rollout_bucket(f"dev-{i}", "digits") < 50)
        outside = next(f"dev-{i}" for i in range(100) if rollout_bucket(f"dev-{i}", "digits") >= 50)
        states = {d: tmp_path / d for d in (inside, outside)}
        for device, state in states.items():
            done = _agent(server, repo, state, keys, "--fleet-url", fleet_url, device=device)
            assert done.returncode == 0 and "updated to v1" in done.stdout, done.stdout + done.stderr
            assert _serving(state, keys) == 1 and _state(state)["active"] == "a"
        publish(repo, bundles[2], rollout=50)
        results = {d: _agent(server, repo, s, keys, "--fleet-url", fleet_url, device=d) for d, s in states.items()}
        assert "updated to v2 (slot b)" in results[inside].stdout
        assert "up to date at v1" in results[outside].stdout
        assert _serving(states[inside], keys) == 2 and _serving(states[outside], keys) == 1
        assert json.loads((states[inside] / "accepted-versions.json").read_text()) == {"digits": 2}
        done = subprocess.run(CLI + ["repo", "rollout", str(repo), "--model", "digits", "--version", "2",
                                     "--percent", "100"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "updated to v2" in _agent(server, repo, states[outside], keys, "--fleet-url", fleet_url,
                                         device=outside).stdout
        status = subprocess.run(CLI + ["fleet", "status", "--url", fleet_url, "--json"], capture_output=True, text=True)
        rows = {r["device_id"]: r for r in json.loads(status.stdout)}
        assert {rows[d]["version"] for d in states} == {2} and {rows[d]["health"] for d in states} == {"ok"}
        table = subprocess.run(CLI + ["fleet", "status", "--url", fleet_url], capture_output=True, text=True)
        assert inside in table.stdout and "2 device(s)" in table.stdout
    finally:
        if fleet is not None:
            fleet.terminate()
            fleet.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.fixture(scope="module")
def at_v1(tmp_path_factory, bundles, keys):
    """A repository with v1, a device state directory that committed v1, then v2 published."""
    root = tmp_path_factory.mktemp("at-v1")
    repo, server = _repo(root, bundles[1])
    template = root / "template-state"
    assert _agent(server, repo, template, keys).returncode == 0
    publish(repo, bundles[2])
    yield repo, server, template
    server.close()


@pytest.mark.parametrize("step", ["download", "verify", "install", "switch", "self-test", "commit"])
def test_kill_9_at_each_step_ends_on_a_verified_model(step, at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    proc = _paused_agent(server, repo, state, keys, step)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert _serving(state, keys) in (1, 2)  # a verified model, old or new, at the moment of the kill
    done = _agent(server, repo, state, keys)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _state(state)
    assert _serving(state, keys) == 2 and after["pending"] is None and after["versions"][after["active"]] == 2
    assert not list(state.glob("slots/*/.bundle.*"))  # half-written slot files cleaned up


def _refused(done: subprocess.CompletedProcess, state: Path, keys, pattern: str, version: int = 1) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(pattern, done.stdout), done.stdout
    assert _serving(state, keys) == version
    assert re.search(pattern, _state(state)["last_error"])  # the reason is recorded


def test_corrupted_download_is_refused(at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    target = next((repo / "public" / "targets" / "digits").glob("*.digits-2.edgeship"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = "/targets/digits/" + target.name
    server.overrides[path] = bytes(data)
    try:
        _refused(_agent(server, repo, state, keys), state, keys, r"download: .*(Hash|hash|Length)")
    finally:
        server.overrides.pop(path)


def test_untrusted_signer_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles["untrusted"])  # a compromised publisher: TUF accepts it, the device must not
    _refused(_agent(server, repo, state, keys), state, keys, r"verify: .*does not match any trusted key")


def test_a_new_device_never_serves_a_failing_model_and_falls_back_to_a_good_one(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1], bundles["bad-selftest"])
    state = tmp_path / "state"
    done = _agent(server, repo, state, keys)  # takes the newest, v5, which fails its self-test
    assert done.returncode == 1 and "v5 failed its self-test" in done.stdout, done.stdout + done.stderr
    assert not (state / "current").exists()  # nothing good yet: serve nothing rather than a broken model
    done = _agent(server, repo, state, keys)
    assert done.returncode == 0 and "updated to v1" in done.stdout and _serving(state, keys) == 1


def test_failing_self_test_after_switch_rolls_back_to_the_old_slot(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles["bad-selftest"])
    done = _agent(server, repo, state, keys)
    assert done.returncode == 1 and "rolled-back" in done.stdout and "rolled back to v1" in done.stdout
    after = _state(state)
    assert _serving(state, keys) == 1 and after["active"] == "a" and 5 in after["failed_versions"]
    assert after["history"][-1]["event"] == "rolled-back" and "self-test" in after["history"][-1]["detail"]
    again = _agent(server, repo, state, keys)  # a failed version is not retried in a loop
    assert again.returncode == 0 and "up to date at v1 (v5 failed on this device before)" in again.stdout


def test_tuf_metadata_rollback_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    old_timestamp = (repo / "public" / "metadata" / "timestamp.json").read_bytes()
    publish(repo, bundles[2])
    assert _agent(server, repo, state, keys).returncode == 0 and _serving(state, keys) == 2
    server.overrides["/metadata/timestamp.json"] = old_timestamp  # replay an older, validly signed timestamp
    publish(repo, bundles[3])
    _refused(_agent(server, repo, state, keys), state, keys, r"download: BadVersionNumberError", version=2)


def test_tuf_freeze_with_an_expired_timestamp_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1], settings=RepoSettings(timestamp_hours=8 / 3600))
    state = tmp_path / "state"
    first = _agent(server, repo, state, keys)
    assert first.returncode == 0, first.stderr
    publish(repo, bundles[2])
    frozen = (repo / "public" / "metadata" / "timestamp.json").read_bytes()
    server.overrides["/metadata/timestamp.json"] = frozen  # the mirror stops updating
    expires = datetime.fromisoformat(json.loads(frozen)["signed"]["expires"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 1.0)
    _refused(_agent(server, repo, state, keys), state, keys, r"download: ExpiredMetadataError")


def test_tuf_mix_and_match_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles[2])
    versions = json.loads((repo / "repo.json").read_text())["versions"]
    metadata = repo / "public" / "metadata"
    # serve the current snapshot's targets name with an older targets file (signed, but another snapshot's)
    server.overrides[f"/metadata/{versions['targets']}.targets.json"] = (
        metadata / f"{versions['targets'] - 1}.targets.json").read_bytes()
    _refused(_agent(server, repo, state, keys), state, keys, r"download: (BadVersionNumberError|RepositoryError)")


@pytest.mark.parametrize("what", ["timestamp", "bundle"])
def test_tuf_endless_data_is_refused(what, tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles[2])
    if what == "timestamp":
        server.overrides["/metadata/timestamp.json"] = "endless"
    else:
        target = next((repo / "public" / "targets" / "digits").glob("*.digits-2.edgeship"))
        server.overrides[f"/targets/digits/{target.name}"] = "endless"
    _refused(_agent(server, repo, state, keys), state, keys, r"download: .*(Length|length)")


@contextlib.contextmanager
def _serve(state: Path, keys, *extra: str) -> Iterator[str]:
    """`edgeship serve` on an agent's state directory: its base URL once it is ready; SIGTERM after."""
    serve = subprocess.Popen(CLI + ["serve", str(state), "--trust", str(keys["public"]), "--decrypt-key",
                                    str(keys["content"]), "--port", "0", *extra], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    port = None
    while port is None:
        line = serve.stdout.readline()
        assert line, serve.stderr.read()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1)) if found else None
    base = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        # serve listens before it prints its address: the request waits in the backlog, no polling
        urllib.request.urlopen(f"{base}/v2/health/ready", timeout=60).close()
        yield base
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)


def test_serve_hot_reloads_the_agents_update_with_no_failed_request(tmp_path, bundles, keys, digits8, make_repo):
    import urllib.request

    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    with _serve(state, keys) as base:
        x = digits8["x_test"][:1]
        body = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.reshape(-1).tolist()}]}).encode()
        statuses, versions, stop = [], set(), threading.Event()
        served = {"1": threading.Event(), "2": threading.Event()}  # a version was answered at least once

        def load() -> None:
            while not stop.is_set():
                request = urllib.request.Request(f"{base}/v2/models/digits/infer", data=body,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        statuses.append(response.status)
                        version = json.loads(response.read())["model_version"]
                        versions.add(version)
                        if version in served:
                            served[version].set()
                except urllib.error.HTTPError as exc:
                    statuses.append(exc.code)
                except OSError:
                    statuses.append(-1)

        clients = [threading.Thread(target=load) for _ in range(2)]
        for c in clients:
            c.start()
        assert served["1"].wait(60)  # the clients are under way on v1
        publish(repo, bundles[2])
        done = _agent(server, repo, state, keys, "--health-url", base)
        assert done.returncode == 0 and "updated to v2" in done.stdout, done.stdout + done.stderr
        assert served["2"].wait(60)  # and go on, now answered by v2
        stop.set()
        for c in clients:
            c.join(30)
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        assert versions == {"1", "2"}  # served v1, then v2, without a failed request
        meta = json.loads(urllib.request.urlopen(f"{base}/v2/models/digits").read())
        assert meta["versions"] == ["2"]


def test_agent_asks_the_server_to_load_the_switched_slot(tmp_path, bundles, keys, make_repo):
    """Triton's repository extension: the agent's load request is taken up at once (the server's
    own poll is an hour here, longer than the agent's 30 s health timeout)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    with _serve(state, keys, "--reload-poll", "3600") as base:
        publish(repo, bundles[2])
        done = _agent(server, repo, state, keys, "--health-url", base)
        assert done.returncode == 0 and "updated to v2" in done.stdout, done.stdout + done.stderr
        client = httpclient.InferenceServerClient(base.removeprefix("http://"))
        assert "model_repository" in client.get_server_metadata()["extensions"]
        assert client.get_model_repository_index() == [{"name": "digits", "version": "2", "state": "READY", "reason": ""}]
        client.load_model("digits")  # nothing new: still v2
        with pytest.raises(InferenceServerException, match="takes no parameters"):
            client.load_model("digits", config='{"backend": "python"}')
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.load_model("other")
        assert client.get_model_metadata("digits")["versions"] == ["2"]


def test_a_switched_slot_the_server_cannot_verify_is_refused_on_load(tmp_path, bundles, keys, make_repo):
    """Whatever lands in the served slot is verified before load: an untrusted bundle switched in
    behind the agent's back is refused, the old model keeps serving, and the reason is shown."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert _agent(server, repo, state, keys).returncode == 0
    with _serve(state, keys, "--reload-poll", "3600") as base:
        active = os.readlink(state / "current")
        other = "slots/b" if active.endswith("a") else "slots/a"
        shutil.copyfile(bundles["untrusted"], state / other / "bundle.edgeship")
        os.symlink(other, state / "current.new")
        os.replace(state / "current.new", state / "current")
        client = httpclient.InferenceServerClient(base.removeprefix("http://"))
        with pytest.raises(InferenceServerException, match="still serving v1; the new bundle was refused: .*signature"):
            client.load_model("digits")
        (entry,) = client.get_model_repository_index()
        assert entry["version"] == "1" and "signature" in entry["reason"]
        x = httpclient.InferInput("image", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        assert client.infer("digits", [x]).get_response()["model_version"] == "1"


def test_agent_configuration_errors_are_one_line(tmp_path, keys):
    done = subprocess.run(CLI + ["agent", "--repo-url", "http://127.0.0.1:9", "--root", str(tmp_path / "nope.json"),
                                 "--state-dir", str(tmp_path / "s"), "--model", "digits", "--trust", str(keys["public"]),
                                 "--once"], capture_output=True, text=True)
    assert done.returncode == 2 and "cannot read --root" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(CLI + ["agent", "--repo-url", "http://127.0.0.1:9", "--root", str(tmp_path / "nope.json"),
                                 "--state-dir", str(tmp_path / "s"), "--model", "digits", "--trust", str(keys["public"])],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "exactly one of --once or --interval" in done.stderr
    np.testing.assert_equal(rollout_bucket("a", "m"), rollout_bucket("a", "m"))  # stable per device


def test_one_agent_per_state_directory(at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    first = _paused_agent(server, repo, state, keys, "install")
    try:
        second = _agent(server, repo, state, keys)
        assert second.returncode == 2 and "another agent is running" in second.stderr
    finally:
        first.kill()
        first.wait(30)
    assert _agent(server, repo, state, keys).returncode == 0  # the lock died with the killed agent


def test_an_agent_in_process_holds_its_state_directory_until_closed(at_v1, keys, tmp_path):
    from edgeship.bundle.keys import load_content_key
    from edgeship.errors import ConfigError
    from edgeship.ota.agent import Agent, AgentConfig

    repo, server, template = at_v1
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    config = AgentConfig(server.url, repo / "root.json", state, "digits", load_public_keys(keys["public"]),
                         load_content_key(keys["content"]))
    with Agent(config) as agent:
        assert agent.check_once().status == "updated"  # v2 was published
        with pytest.raises(ConfigError, match="another agent is running"):
            Agent(config)
    with Agent(config) as again:  # released on close
        assert again.active_version == 2 and again.check_once().status == "up-to-date"


def _broken_llm_selftest(bundle: Path, out: Path, private_key: Path) -> Path:
    """The bundle re-signed with a self-test no engine can pass (the top five are ids outside the vocabulary)."""
    import zipfile

    from edgeship.bundle.keys import load_private_key

    with zipfile.ZipFile(bundle) as zin:
        members = {i.filename: zin.read(i) for i in zin.infolist()}
    manifest = json.loads(members["manifest.json"])
    manifest["selftest"]["top5"] = [10**9]
    raw = json.dumps(manifest).encode()
    members["manifest.json"], members["manifest.sig"] = raw, load_private_key(private_key).sign(raw)
    with zipfile.ZipFile(out, "w") as zout:
        for name, data in members.items():
            zout.writestr(name, data)
    return out


def test_an_llm_bundle_goes_through_the_repository_and_the_agent(tmp_path, tiny_genai, keys, make_repo):
    """Streamed verification, a chat self-test, commit; a bundle that cannot chat rolls back."""
    from edgeship.bundle.llm import pack_llm

    v1 = pack_llm(tiny_genai, "tiny", 1, keys["private"], tmp_path / "t1.edgeship", keys["content"])
    v2 = pack_llm(tiny_genai, "tiny", 2, keys["private"], tmp_path / "t2.edgeship", keys["content"])
    repo, server = make_repo(v1)
    state = tmp_path / "state"
    done = _agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 0 and "updated to v1" in done.stdout, done.stdout + done.stderr
    publish(repo, v2, trusted_keys=load_public_keys(keys["public"]))
    done = _agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 0 and "updated to v2" in done.stdout, done.stdout + done.stderr
    v3 = pack_llm(tiny_genai, "tiny", 3, keys["private"], tmp_path / "t3.edgeship", keys["content"])
    publish(repo, _broken_llm_selftest(v3, tmp_path / "t3-broken.edgeship", keys["private"]))
    done = _agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 1 and "rolled back to v2" in done.stdout, done.stdout + done.stderr
    after = _state(state)
    assert after["versions"][after["active"]] == 2 and 3 in after["failed_versions"]
    assert "self-test" in after["history"][-1]["detail"]
