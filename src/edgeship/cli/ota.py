"""Fleet-update commands: the TUF repository (repo, publish), the device agent, and the fleet service."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from edgeship.cli._common import console, err_console, guard, print_json

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
    interval: Annotated[Optional[float], typer.Option("--interval", help="Check every S seconds (with 10% jitter).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Check once and exit (status 1 if an update was refused).")] = False,
) -> None:
    """Keep a model up to date from the repository: verify, A/B install, self-test, health check, commit or roll back."""
    from edgeship.ota.agent import Agent, AgentConfig

    if once == (interval is not None):
        err_console.print("[bold red]error:[/] give exactly one of --once or --interval S.", highlight=False)
        raise typer.Exit(2)

    def show(result: Any) -> None:
        recovered = result.details.get("recovered")
        if recovered:
            console.print(f"recovered: {recovered}", highlight=False, markup=False)
        style = "green" if result.status in ("updated", "up-to-date") else "bold red"
        console.print(f"[{style}]{result.status}[/]: {escape(result.message)}", highlight=False)
        sys.stdout.flush()

    def work() -> Any:
        from edgeship.bundle.keys import load_content_key, load_public_keys

        config = AgentConfig(repo_url, root, state_dir, model, load_public_keys(list(trust)),
                             load_content_key(decrypt_key) if decrypt_key else None, channel.value, device_id,
                             health_url, fleet_url)
        return Agent(config).run(interval, on_result=show)

    result = guard(work)
    raise typer.Exit(0 if result.ok else 1)


@fleet_app.command("serve")
def fleet_serve(
    db: Annotated[Path, typer.Option("--db", help="SQLite file for the reports.")] = Path("fleet.sqlite"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8100,
) -> None:
    """Receive agents' reports (POST /v1/reports) and serve them (GET /v1/devices)."""
    import uvicorn

    from edgeship.ota.fleet import create_fleet_app

    app_ = guard(lambda: create_fleet_app(db))
    console.print(f"fleet status on http://{host}:{port}/v1/devices (reports in {db})", highlight=False)
    sys.stdout.flush()
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


@fleet_app.command("status")
def fleet_status(
    url: Annotated[str, typer.Option("--url", help="The fleet service.")] = "http://127.0.0.1:8100",
    model: Annotated[Optional[str], typer.Option("--model", help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print every device's model, version, slot, health and last error."""
    from edgeship.ota.fleet import fetch_status

    rows = guard(lambda: fetch_status(url, model))
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"fleet: {len(rows)} device(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("device", "model", "channel", "version", "slot", "health", "last error", "reported"):
        table.add_column(column, no_wrap=column != "last error")
    for r in rows:  # every field a device sent is escaped: rich markup in it is shown, never obeyed
        health = escape(str(r.get("health") or ""))
        table.add_row(escape(str(r["device_id"])), escape(str(r["model"])), escape(str(r.get("channel") or "")),
                      escape(str(r.get("version") or "-")), escape(str(r.get("slot") or "-")),
                      f"[green]{health}[/]" if health == "ok" else f"[red]{health}[/]",
                      escape(str(r.get("last_error") or "")), escape(str(r.get("reported_at") or "")))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(repo_app, name="repo")
    app.command()(publish)
    app.command()(agent)
    app.add_typer(fleet_app, name="fleet")
