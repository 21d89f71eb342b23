"""The fleet service as an attacker and a careless operator meet it: a real uvicorn server on
127.0.0.1, real HTTP clients, and the real CLI reading it back."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeship.core.http import bind
from edgeship.ota.fleet import FleetLimits, create_fleet_app, new_operator_token
from edgeship.ota.fleet_store import FleetStore, PostgresFleetStore
from edgeship.ota.fleet_client import fetch_status, send_report
from edgeship.errors import FleetError

CLI = [sys.executable, "-m", "edgeship.cli"]
FAIL_AFTER_S = 60  # waits for the browser end as soon as it is done; this only bounds a failure
LIMITS = FleetLimits(max_body_bytes=4096, max_models_per_device=3, max_page=50)


class Fleet:
    def __init__(self, base: str, store: FleetStore, operator: str, folder: Path) -> None:
        self.base, self.store, self.operator, self.folder = base, store, operator, folder

    def report(self, token: str | None, **fields: object) -> httpx.Response:
        body = {"device_id": "dev-a", "model": "digits", "version": 1, "health": "ok", **fields}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.base + "/v1/reports", json=body, headers=headers)

    def rows(self, token: str | None = None, **params: object) -> httpx.Response:
        token = self.operator if token is None else token
        return httpx.get(self.base + "/v1/devices", params=params, headers={"Authorization": f"Bearer {token}"})


POSTGRES = os.environ.get("EDGESHIP_TEST_POSTGRES")  # .ci/run starts Debian's PostgreSQL and sets it


def open_test_store(kind: str, folder: Path) -> FleetStore:
    """An empty store of ``kind``: an SQLite file, or PostgreSQL with its tables dropped first."""
    if kind == "sqlite":
        return FleetStore(folder / "fleet.sqlite")
    if not POSTGRES:
        pytest.skip("EDGESHIP_TEST_POSTGRES is not set (.ci/run starts PostgreSQL and sets it)")
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS devices, credentials")
    return PostgresFleetStore(POSTGRES)


@contextlib.contextmanager
def running_fleet(store: FleetStore, folder: Path, limits: FleetLimits = LIMITS) -> Iterator[Fleet]:
    import uvicorn

    operator = new_operator_token()
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_fleet_app(store, operator, limits), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Fleet(f"http://127.0.0.1:{sock.getsockname()[1]}", store, operator, folder)
    finally:
        server.should_exit = True
        thread.join(60)
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request, tmp_path) -> Iterator[Fleet]:
    """The same tests against both stores."""
    with running_fleet(open_test_store(request.param, tmp_path), tmp_path) as running:
        yield running


def test_every_route_but_health_needs_the_right_credential(fleet):
    device = fleet.store.enroll("dev-a")
    assert httpx.get(fleet.base + "/v1/health").status_code == 200
    for token in (None, "", "esd_forged", fleet.operator):  # the operator is not a device
        assert fleet.report(token).status_code == 401
    for token in ("esd_forged", device, "x" * 5000):  # a device does not read the fleet
        assert fleet.rows(token).status_code == 401
    assert fleet.report(device).status_code == 200
    assert [r["device_id"] for r in fleet.rows().json()] == ["dev-a"]


def test_a_device_writes_only_its_own_rows(fleet):
    a, b = fleet.store.enroll("dev-a"), fleet.store.enroll("dev-b")
    assert fleet.report(b, device_id="dev-b", version=7).status_code == 200
    refused = fleet.report(a, device_id="dev-b", version=1, health="spoofed")
    assert refused.status_code == 403 and "belongs to device 'dev-a'" in refused.json()["detail"]
    row = next(r for r in fleet.rows().json() if r["device_id"] == "dev-b")
    assert row["version"] == 7 and row["health"] == "ok"


def test_enrolling_again_revokes_the_old_token(fleet):
    old = fleet.store.enroll("dev-a")
    new = fleet.store.enroll("dev-a")
    assert fleet.report(old).status_code == 401 and fleet.report(new).status_code == 200


@pytest.mark.parametrize("fields", [
    {"device_id": "../other"}, {"model": "a/b"}, {"model": "[red]x[/]"}, {"version": 0}, {"version": 2**80},
    {"version": "١٢"}, {"version": 1.5}, {"slot": "c"}, {"channel": "nightly"}, {"last_error": "e" * 2001},
    {"health": "h" * 51},
])
def test_malformed_reports_are_refused_with_a_4xx(fields, fleet):
    token = fleet.store.enroll("dev-a")
    got = fleet.report(token, **fields)
    assert 400 <= got.status_code < 500, (fields, got.status_code, got.text)
    assert fleet.rows().json() == []


def test_bodies_and_rows_are_bounded(fleet):
    token = fleet.store.enroll("dev-a")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = httpx.post(fleet.base + "/v1/reports", content=b"{" + b" " * 10000 + b"}", headers=headers)
    streamed = httpx.post(fleet.base + "/v1/reports", content=iter([b" " * 3000] * 4), headers=headers)
    assert big.status_code == 413 and streamed.status_code == 413
    for i in range(LIMITS.max_models_per_device):
        assert fleet.report(token, model=f"m{i}").status_code == 200
    assert fleet.report(token, model="m0", version=2).status_code == 200  # replacing a row is fine
    more = fleet.report(token, model="one-too-many")
    assert more.status_code == 409 and "most one device may hold" in more.json()["detail"]
    assert len(fleet.rows(limit=10**6).json()) == LIMITS.max_models_per_device  # a page is capped, not refused
    assert fleet.rows(offset=-1).status_code == 422


def test_status_reads_every_page(fleet):
    for i in range(LIMITS.max_page + 7):
        send_report(fleet.base, fleet.store.enroll(f"dev-{i:03}"), {"device_id": f"dev-{i:03}", "model": "digits"})
    expected = [f"dev-{i:03}" for i in range(LIMITS.max_page + 7)]
    for page in (3, 1000):  # smaller and larger than the server's page
        assert [r["device_id"] for r in fetch_status(fleet.base, fleet.operator, page=page)] == expected
    with pytest.raises(FleetError, match="401"):
        fetch_status(fleet.base, "eso_wrong")


def test_text_a_device_sends_is_shown_never_obeyed(fleet):
    token = fleet.store.enroll("dev-a")
    hostile = "[/] [bold red]dev-z   digits  v9  ok[/] \x1b[2J\x1b]0;owned\x07 [link=http://x]y"
    assert fleet.report(token, last_error=hostile, message="[/]", health="[blink]ok").status_code == 200
    token_file = fleet.folder / "operator.token"
    token_file.write_text(fleet.operator)
    done = subprocess.run(CLI + ["fleet", "status", "--url", fleet.base, "--token-file", str(token_file)],
                          capture_output=True, text=True, env={"COLUMNS": "300", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "[bold red]dev-z" in done.stdout and "\\x1b[2J" in done.stdout and "[blink]ok" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["fleet", "enroll", "../dev"], "device id '../dev' is not a plain name"),
    (["fleet", "enroll", "dev [red]x"], "device id 'dev [red]x' is not a plain name"),
    (["fleet", "status", "--url", "http://127.0.0.1:9", "--token-file", "/dev/zero"], "should hold one token"),
])
def test_fleet_commands_refuse_nonsense_with_one_line(args, message, tmp_path):
    done = subprocess.run(CLI + args, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_status_with_the_wrong_token_is_one_line(fleet):
    wrong = fleet.folder / "wrong.token"
    wrong.write_text("eso_not-the-operator-token")
    done = subprocess.run(CLI + ["fleet", "status", "--url", fleet.base, "--token-file", str(wrong)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "answered 401" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, driven by Selenium through Debian's chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()


def _submit(browser, button_id: str) -> None:
    """Click a form's button and wait until the browser has the next page (the old one goes stale)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, button_id).click()
    WebDriverWait(browser, FAIL_AFTER_S).until(expected_conditions.staleness_of(page))


def test_the_dashboard_shows_the_fleet_to_a_signed_in_operator_in_a_real_browser(fleet, browser):
    from selenium.webdriver.common.by import By

    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    reports = [("cam-1", 2, "ok", None), ("cam-2", 2, "ok", None), ("cam-3", 1, "rolled-back", hostile)]
    for device, version, health, error in reports:
        token = fleet.store.enroll(device)
        assert fleet.report(token, device_id=device, version=version, health=health, last_error=error).status_code == 200
    browser.delete_all_cookies()
    browser.get(fleet.base + "/dashboard")
    assert browser.find_elements(By.ID, "token") and not browser.find_elements(By.ID, "devices")  # signed out
    for wrong in ("eso_wrong", fleet.store.enroll("cam-9")):  # nor a device's token
        browser.find_element(By.ID, "token").send_keys(wrong)
        _submit(browser, "sign-in")
        assert "not the operator's token" in browser.find_element(By.ID, "login-error").text
    browser.find_element(By.ID, "token").send_keys(fleet.operator)
    _submit(browser, "sign-in")

    progress = browser.find_element(By.CSS_SELECTOR, '#rollout tr[data-model="digits"] .progress').text
    assert progress == "2 of 3 on v2 (67%)"
    rows = browser.find_elements(By.CSS_SELECTOR, "#devices tr")[1:]
    assert [r.find_element(By.CLASS_NAME, "device").text for r in rows] == ["cam-3", "cam-1", "cam-2"]  # unhealthy first
    assert rows[0].find_element(By.CLASS_NAME, "error").text == hostile  # shown as text, never run
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#devices script, #devices img")
    browser.save_screenshot(str(fleet.folder / "dashboard.png"))

    _submit(browser, "sign-out")
    assert browser.find_elements(By.ID, "token")  # back to the sign-in form
    headers = httpx.get(fleet.base + "/dashboard").headers
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers["content-security-policy"]
