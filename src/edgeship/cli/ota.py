"""Fleet-update commands: the TUF repository (repo, publish), the device agent, and the fleet service."""

from __future__ import annotations

import math
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from edgeship.cli._common import console, err_console, guard, print_json, shown

__all__ = ["register"]


class Channel(str, Enum):
    stable = "stable"
    canary = "canary"


ChannelOption = Annotated[Channel, typer.Option("--channel", help="Release channel.")]

repo_app = typer.Typer(no_args_is_help=True, help="A TUF-secured static update repository for model bundles.")
fleet_app = typer.Typer(no_args_is_help=True, help="Fleet status: where every device stands.")


@repo_app.command("init")
def repo_init(
    directory: Annotated[Path, typer.Argument(help="A new folder for the repository.")],
    timestamp_hours: Annotated[float, typer.Option("--timestamp-hours", help="How long a timestamp stays valid.")] = 24.0,
    snapshot_days: Annotated[float, typer.Option("--snapshot-days", help="How long a snapshot stays valid.")] = 30.0,
    targets_days: Annotated[float, typer.Option("--targets-days", help="How long targets metadata stays valid.")] = 90.0,
    root_days: Annotated[float, typer.Option("--root-days", help="How long root metadata stays valid.")] = 365.0,
) -> None:
    """Create keys and signed TUF metadata (root, targets, snapshot, timestamp)."""
    from edgeship.ota.repository import RepoSettings, init_repo

    root = guard(lambda: init_repo(directory, RepoSettings(root_days, targets_days, snapshot_days, timestamp_hours)))
    console.print(f"repository in {directory}: serve {directory / 'public'} over HTTP; devices ship {root}; "
                  f"keep {directory / 'keys'} private (offline, ideally).", highlight=False)


@repo_app.command("timestamp")
def repo_timestamp(directory: Annotated[Path, typer.Argument(help="The repository folder.")]) -> None:
    """Re-sign timestamp.json (run it more often than --timestamp-hours, e.g. from cron)."""
    from edgeship.ota.repository import refresh_timestamp

    version = guard(lambda: refresh_timestamp(directory))
    console.print(f"timestamp v{version} signed", highlight=False)


@repo_app.command("rollout")
def repo_rollout(
    directory: Annotated[Path, typer.Argument(help="The repository folder.")],
    model: Annotated[str, typer.Option("--model", help="Model name.")],
    version: Annotated[int, typer.Option("--version", help="The published version to change.")],
    percent: Annotated[float, typer.Option("--percent", min=0, max=100, help="Share of devices, 0-100, chosen by a stable hash of the device id.")],
    channel: ChannelOption = Channel.stable,
) -> None:
    """Change how many devices a published release reaches."""
    from edgeship.ota.repository import set_rollout

    guard(lambda: set_rollout(directory, model, version, percent, channel.value))
    console.print(f"{model} v{version} on {channel.value}: rollout {percent:g}%", highlight=False)


def publish(
    bundle: Annotated[Path, typer.Argument(help="A .edgeship bundle.")],
    repo: Annotated[Path, typer.Option("--repo", help="The repository folder (from `edgeship repo init`).")],
    channel: ChannelOption = Channel.stable,
    rollout: Annotated[float, typer.Option("--rollout", min=0, max=100, help="Share of devices that take it, 0-100.")] = 100.0,
    trust: Annotated[Optional[list[Path]], typer.Option("--trust", help="Check the bundle's signature against these keys first.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the channel index as JSON.")] = False,
) -> None:
    """Add a bundle to the update repository as the newest release of its model on a channel."""
    from edgeship.ota.repository import publish as publish_bundle

    def work() -> Any:
        keys = None
        if trust:
            from edgeship.bundle.keys import load_public_keys

            keys = load_public_keys(list(trust))
        return publish_bundle(repo, bundle, channel.value, rollout, keys)

    index = guard(work)
    if as_json:
        print_json(index)
        return
    latest = index["releases"][-1]
    console.print(f"published {index['model']} v{latest['version']} on {channel.value} ({latest['rollout']:g}% rollout)",
                  highlight=False)


def agent(
    repo_url: Annotated[str, typer.Option("--repo-url", help="Where the repository's public folder is served.")],
    root: Annotated[Path, typer.Option("--root", help="The repository's root.json that this device shipped with.")],
    state_dir: Annotated[Path, typer.Option("--state-dir", help="The device's A/B slots and update state.")],
    model: Annotated[str, typer.Option("--model", help="The model this device runs.")],
    trust: Annotated[list[Path], typer.Option("--trust", help="Trusted bundle signing key(s), signing.pub.")],
    decrypt_key: Annotated[Optional[Path], typer.Option("--decrypt-key", help="content.key, for encrypted bundles.")] = None,
    channel: ChannelOption = Channel.stable,
    device_id: Annotated[Optional[str], typer.Option("--device-id", help="Default: generated once and kept in the state dir.")] = None,
    health_url: Annotated[Optional[str], typer.Option("--health-url", help="The local `edgeship serve STATE_DIR`, checked after each switch.")] = None,
    fleet_url: Annotated[Optional[str], typer.Option("--fleet-url", help="`edgeship fleet serve` to report to.")] = None,
    fleet_token_file: Annotated[Optional[Path], typer.Option("--fleet-token-file", help="This device's fleet token (from `edgeship fleet enroll DEVICE`).")] = None,
    interval: Annotated[Optional[float], typer.Option("--interval", help="Check every S seconds (with 10% jitter).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Check once and exit (status 1 if an update was refused).")] = False,
) -> None:
    """Keep a model up to date from the repository: verify, A/B install, self-test, health check, commit or roll back."""
    from edgeship.ota.agent import Agent, AgentConfig

    if once == (interval is not None):
        err_console.print("[bold red]error:[/] give exactly one of --once or --interval S.", highlight=False)
        raise typer.Exit(2)
    if interval is not None and not (math.isfinite(interval) and 1 <= interval <= 7 * 86400):
        err_console.print(f"[bold red]error:[/] --interval is seconds between checks, 1 to 604800; got {interval}.",
                          highlight=False)
        raise typer.Exit(2)
    if (fleet_url is None) != (fleet_token_file is None):
        err_console.print("[bold red]error:[/] --fleet-url and --fleet-token-file go together (the fleet service "
                          "takes reports only with the device's token).", highlight=False)
        raise typer.Exit(2)

    def show(result: Any) -> None:
        recovered = result.details.get("recovered")
        if recovered:
            console.print(f"recovered: {recovered}", highlight=False, markup=False)
        style = "green" if result.status in ("updated", "up-to-date") else "bold red"
        console.print(f"[{style}]{result.status}[/]: {shown(result.message)}", highlight=False)
        sys.stdout.flush()

    def work() -> Any:
        from edgeship.bundle.keys import load_content_key, load_public_keys
        from edgeship.core.http import read_token_file

        config = AgentConfig(repo_url, root, state_dir, model, load_public_keys(list(trust)),
                             load_content_key(decrypt_key) if decrypt_key else None, channel.value, device_id,
                             health_url, fleet_url, read_token_file(fleet_token_file))
        return Agent(config).run(interval, on_result=show)

    result = guard(work)
    raise typer.Exit(0 if result.ok else 1)


DbOption = Annotated[str, typer.Option("--db", help="Where reports and device credentials live: an SQLite file, or postgresql://user@host/db.")]


@fleet_app.command("enroll")
def fleet_enroll(
    device: Annotated[str, typer.Argument(help="The device id (the agent's --device-id).")],
    db: DbOption = "fleet.sqlite",
) -> None:
    """Issue DEVICE's token and print it (give it to the device's agent as --fleet-token-file).
    Enrolling again replaces the token; the old one stops working."""
    from edgeship.ota.fleet_store import open_store

    token = guard(lambda: open_store(db).enroll(device))
    print(token)


@fleet_app.command("serve")
def fleet_serve(
    operator_token_file: Annotated[Path, typer.Option("--operator-token-file", help="The operator's token; a new one is written there (0600) if the file does not exist.")],
    db: DbOption = "fleet.sqlite",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8100,
) -> None:
    """Receive agents' reports (POST /v1/reports, device tokens) and serve them (GET /v1/devices, the operator's token)."""
    from edgeship.core.http import ConnectionLimits, bind, read_token_file, run_app
    from edgeship.ota.fleet import FleetLimits, create_fleet_app, new_operator_token

    def start() -> Any:
        if not operator_token_file.exists():
            from edgeship.core.files import write_private

            write_private(operator_token_file, (new_operator_token() + "\n").encode())
            console.print(f"wrote a new operator token to {operator_token_file}", highlight=False, markup=False)
        return create_fleet_app(db, read_token_file(operator_token_file)), bind(host, port)

    app_, sock = guard(start)
    where = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", db)  # a URL's password is not printed
    console.print(f"fleet status on http://{host}:{sock.getsockname()[1]}/v1/devices, dashboard at /dashboard "
                  f"(reports in {where})", highlight=False, markup=False)
    sys.stdout.flush()
    run_app(app_, sock, 10, ConnectionLimits(max_body_bytes=FleetLimits().max_body_bytes))


@fleet_app.command("status")
def fleet_status(
    token_file: Annotated[Path, typer.Option("--token-file", help="The operator's token (fleet serve --operator-token-file).")],
    url: Annotated[str, typer.Option("--url", help="The fleet service.")] = "http://127.0.0.1:8100",
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print every device's model, version, slot, health and last error."""
    from edgeship.core.http import read_token_file
    from edgeship.ota.fleet_client import fetch_status

    rows = guard(lambda: fetch_status(url, read_token_file(token_file), model))
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"fleet: {len(rows)} device(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("device", "model", "channel", "version", "slot", "health", "last error", "reported"):
        table.add_column(column, no_wrap=column != "last error")
    for r in rows:  # every field a device sent is shown, never obeyed (rich markup, terminal escapes)
        health = shown(r.get("health") or "")
        table.add_row(shown(r["device_id"]), shown(r["model"]), shown(r.get("channel") or ""),
                      shown(r.get("version") or "-"), shown(r.get("slot") or "-"),
                      f"[green]{health}[/]" if health == "ok" else f"[red]{health}[/]",
                      shown(r.get("last_error") or ""), shown(r.get("reported_at") or ""))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(repo_app, name="repo")
    app.command()(publish)
    app.command()(agent)
    app.add_typer(fleet_app, name="fleet")
