"""Over-the-air updates with real processes: a TUF repository served over HTTP on 127.0.0.1,
agents as subprocesses, `edgeship serve` on the agent's state directory, and faults injected
at every step (kill -9, corrupted downloads, untrusted signers, failing self-tests, TUF attacks)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from edgeship.bundle import load_public_keys
from edgeship.ota.agent import rollout_bucket
from edgeship.ota.repository import RepoError, init_repo, publish
from ota_support import (CLI, RepoServer, agent_cmd, agent_state, assert_refused, bundles, keys,  # noqa: F401
                         at_v1, make_repo, paused_agent, repo_with, run_agent, serving)


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
        db, operator = tmp_path / "fleet.sqlite", tmp_path / "operator.token"
        fleet = subprocess.Popen(CLI + ["fleet", "serve", "--db", str(db), "--port", "0",
                                        "--operator-token-file", str(operator)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # it prints its address once it listens: requests from then on wait in the backlog, no polling
        fleet_url = next(m.group(1) for line in fleet.stdout
                         if (m := re.search(r"(http://127\.0\.0\.1:\d+)/v1/devices", line)))
        # two devices, one inside a 50% rollout and one outside it, each with its own fleet token
        inside = next(f"dev-{i}" for i in range(100) if rollout_bucket(f"dev-{i}", "digits") < 50)
        outside = next(f"dev-{i}" for i in range(100) if rollout_bucket(f"dev-{i}", "digits") >= 50)
        states = {d: tmp_path / d for d in (inside, outside)}
        tokens = {}
        for device in states:
            tokens[device] = tmp_path / f"{device}.token"
            enrolled = subprocess.run(CLI + ["fleet", "enroll", device, "--db", str(db)], capture_output=True, text=True)
            tokens[device].write_text(enrolled.stdout)

        def fleet_args(device: str) -> tuple[str, ...]:
            return "--fleet-url", fleet_url, "--fleet-token-file", str(tokens[device])

        for device, state in states.items():
            done = run_agent(server, repo, state, keys, *fleet_args(device), device=device)
            assert done.returncode == 0 and "updated to v1" in done.stdout, done.stdout + done.stderr
            assert serving(state, keys) == 1 and agent_state(state)["active"] == "a"
        publish(repo, bundles[2], rollout=50)
        results = {d: run_agent(server, repo, s, keys, *fleet_args(d), device=d) for d, s in states.items()}
        assert "updated to v2 (slot b)" in results[inside].stdout
        assert "up to date at v1" in results[outside].stdout
        assert serving(states[inside], keys) == 2 and serving(states[outside], keys) == 1
        assert json.loads((states[inside] / "accepted-versions.json").read_text()) == {"digits": 2}
        done = subprocess.run(CLI + ["repo", "rollout", str(repo), "--model", "digits", "--version", "2",
                                     "--percent", "100"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "updated to v2" in run_agent(server, repo, states[outside], keys, *fleet_args(outside),
                                         device=outside).stdout
        reader = ["--url", fleet_url, "--token-file", str(operator)]
        status = subprocess.run(CLI + ["fleet", "status", *reader, "--json"], capture_output=True, text=True)
        rows = {r["device_id"]: r for r in json.loads(status.stdout)}
        assert {rows[d]["version"] for d in states} == {2} and {rows[d]["health"] for d in states} == {"ok"}
        table = subprocess.run(CLI + ["fleet", "status", *reader], capture_output=True, text=True)
        assert inside in table.stdout and "2 device(s)" in table.stdout
    finally:
        if fleet is not None:
            fleet.terminate()
            fleet.wait(30)


@pytest.mark.parametrize("step", ["download", "verify", "install", "switch", "self-test", "commit"])
def test_kill_9_at_each_step_ends_on_a_verified_model(step, at_v1, keys, tmp_path):
    repo, server, template = at_v1
    state = tmp_path / "state"
    shutil.copytree(template, state, symlinks=True)
    proc = paused_agent(server, repo, state, keys, step)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert serving(state, keys) in (1, 2)  # a verified model, old or new, at the moment of the kill
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 0, done.stdout + done.stderr
    after = agent_state(state)
    assert serving(state, keys) == 2 and after["pending"] is None and after["versions"][after["active"]] == 2
    assert not list(state.glob("slots/*/.bundle.*"))  # half-written slot files cleaned up


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
        assert_refused(run_agent(server, repo, state, keys), state, keys, r"download: .*(Hash|hash|Length)")
    finally:
        server.overrides.pop(path)


def test_untrusted_signer_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert run_agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles["untrusted"])  # a compromised publisher: TUF accepts it, the device must not
    assert_refused(run_agent(server, repo, state, keys), state, keys, r"verify: .*does not match any trusted key")


def test_a_new_device_never_serves_a_failing_model_and_falls_back_to_a_good_one(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1], bundles["bad-selftest"])
    state = tmp_path / "state"
    done = run_agent(server, repo, state, keys)  # takes the newest, v5, which fails its self-test
    assert done.returncode == 1 and "v5 failed its self-test" in done.stdout, done.stdout + done.stderr
    assert not (state / "current").exists()  # nothing good yet: serve nothing rather than a broken model
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 0 and "updated to v1" in done.stdout and serving(state, keys) == 1


def test_failing_self_test_after_switch_rolls_back_to_the_old_slot(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert run_agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles["bad-selftest"])
    done = run_agent(server, repo, state, keys)
    assert done.returncode == 1 and "rolled-back" in done.stdout and "rolled back to v1" in done.stdout
    after = agent_state(state)
    assert serving(state, keys) == 1 and after["active"] == "a" and 5 in after["failed_versions"]
    assert after["history"][-1]["event"] == "rolled-back" and "self-test" in after["history"][-1]["detail"]
    again = run_agent(server, repo, state, keys)  # a failed version is not retried in a loop
    assert again.returncode == 0 and "up to date at v1 (v5 failed on this device before)" in again.stdout


def test_tuf_metadata_rollback_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    old_timestamp = (repo / "public" / "metadata" / "timestamp.json").read_bytes()
    publish(repo, bundles[2])
    assert run_agent(server, repo, state, keys).returncode == 0 and serving(state, keys) == 2
    server.overrides["/metadata/timestamp.json"] = old_timestamp  # replay an older, validly signed timestamp
    publish(repo, bundles[3])
    assert_refused(run_agent(server, repo, state, keys), state, keys, r"download: BadVersionNumberError", version=2)


def test_tuf_freeze_with_an_expired_timestamp_is_refused(tmp_path, bundles, keys, make_repo):
    """A mirror frozen past the timestamp's expiry: the timestamp it serves is validly signed and has
    expired (signed here with an expiry in the past, instead of waiting for one to pass)."""
    from edgeship.ota.repository import _Repo

    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    first = run_agent(server, repo, state, keys)
    assert first.returncode == 0, first.stderr
    publish(repo, bundles[2])
    r = _Repo(repo)
    timestamp = r.bump("timestamp", r.load("timestamp"))
    timestamp.signed.expires = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    r.write("timestamp", timestamp)  # what the frozen mirror serves: the last timestamp, now expired
    assert_refused(run_agent(server, repo, state, keys), state, keys, r"download: ExpiredMetadataError")


def test_tuf_mix_and_match_is_refused(tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert run_agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles[2])
    versions = json.loads((repo / "repo.json").read_text())["versions"]
    metadata = repo / "public" / "metadata"
    # serve the current snapshot's targets name with an older targets file (signed, but another snapshot's)
    server.overrides[f"/metadata/{versions['targets']}.targets.json"] = (
        metadata / f"{versions['targets'] - 1}.targets.json").read_bytes()
    assert_refused(run_agent(server, repo, state, keys), state, keys, r"download: (BadVersionNumberError|RepositoryError)")


@pytest.mark.parametrize("what", ["timestamp", "bundle"])
def test_tuf_endless_data_is_refused(what, tmp_path, bundles, keys, make_repo):
    repo, server = make_repo(bundles[1])
    state = tmp_path / "state"
    assert run_agent(server, repo, state, keys).returncode == 0
    publish(repo, bundles[2])
    if what == "timestamp":
        server.overrides["/metadata/timestamp.json"] = "endless"
    else:
        target = next((repo / "public" / "targets" / "digits").glob("*.digits-2.edgeship"))
        server.overrides[f"/targets/digits/{target.name}"] = "endless"
    assert_refused(run_agent(server, repo, state, keys), state, keys, r"download: .*(Length|length)")


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
    assert run_agent(server, repo, state, keys).returncode == 0
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
        done = run_agent(server, repo, state, keys, "--health-url", base)
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
    assert run_agent(server, repo, state, keys).returncode == 0
    with _serve(state, keys, "--reload-poll", "3600") as base:
        publish(repo, bundles[2])
        done = run_agent(server, repo, state, keys, "--health-url", base)
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
    assert run_agent(server, repo, state, keys).returncode == 0
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
    first = paused_agent(server, repo, state, keys, "install")
    try:
        second = run_agent(server, repo, state, keys)
        assert second.returncode == 2 and "another agent is running" in second.stderr
    finally:
        first.kill()
        first.wait(30)
    assert run_agent(server, repo, state, keys).returncode == 0  # the lock died with the killed agent


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
    done = run_agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 0 and "updated to v1" in done.stdout, done.stdout + done.stderr
    publish(repo, v2, trusted_keys=load_public_keys(keys["public"]))
    done = run_agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 0 and "updated to v2" in done.stdout, done.stdout + done.stderr
    v3 = pack_llm(tiny_genai, "tiny", 3, keys["private"], tmp_path / "t3.edgeship", keys["content"])
    publish(repo, _broken_llm_selftest(v3, tmp_path / "t3-broken.edgeship", keys["private"]))
    done = run_agent(server, repo, state, keys, model="tiny")
    assert done.returncode == 1 and "rolled back to v2" in done.stdout, done.stdout + done.stderr
    after = agent_state(state)
    assert after["versions"][after["active"]] == 2 and 3 in after["failed_versions"]
    assert "self-test" in after["history"][-1]["detail"]
