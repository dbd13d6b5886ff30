"""`python -m stt_devstack up|down|status|system-deps|demo` (behind `make up`, `make down`, ...)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from stt_common.settings import Settings
from stt_devstack.config import StackConfig
from stt_devstack.stack import render_env, status, stop, up
from stt_devstack.state import StackError
from stt_devstack.sysdeps import ensure_system_packages


def cmd_system_deps(config: StackConfig, args: argparse.Namespace) -> int:
    installed = ensure_system_packages()
    if installed:
        print(f"installed: {', '.join(installed)}")
    return 0


def cmd_up(config: StackConfig, args: argparse.Namespace) -> int:
    cmd_system_deps(config, args)
    began = time.monotonic()
    with _state_lock(config):
        env, outcome = asyncio.run(up(config))
    for name, what in outcome.items():
        print(f"{name}: {what}")
    print(f"\n# {config.env_file} (secrets shortened; `source` the file for the real values)")
    print(render_env(env, redact=True), end="")
    print(f"# up in {time.monotonic() - began:.1f} s", file=sys.stderr)
    return 0


def cmd_down(config: StackConfig, args: argparse.Namespace) -> int:
    with _state_lock(config):
        asyncio.run(stop(config, purge=args.purge))
    print("stopped")
    return 0


def cmd_status(config: StackConfig, args: argparse.Namespace) -> int:
    rows = asyncio.run(status(config))
    print(f"{'component':<12} {'pid':>9} {'port':>6}  state")
    for row in rows:
        print(row.line())
    # Healthy when every component that was started (or found) answers.
    started = [row for row in rows if row.pid is not None or row.external]
    return 0 if started and all(row.up for row in started) else 1


def cmd_demo(config: StackConfig, args: argparse.Namespace) -> int:
    """Transcribe real speech through the REST API of a running stack (`make demo` runs `up` first)."""
    from stt_devstack.demo import run_demo
    from stt_devstack.stack import read_env_file

    env = read_env_file(config) if config.env_file.exists() else {}
    if "STT_API_URL" not in env:
        print("the stack is not up: run `make up` first", file=sys.stderr)
        return 1
    return run_demo(env["STT_API_URL"], env["STT_API_KEY"], config.state_dir / "demo")


COMMANDS: dict[str, tuple[Callable[[StackConfig, argparse.Namespace], int], str]] = {
    "system-deps": (cmd_system_deps, "install missing Debian packages (does nothing when all are present)"),
    "up": (cmd_up, "start infrastructure and services, provision them, write and print the env file"),
    "down": (cmd_down, "stop exactly what `up` started"),
    "status": (cmd_status, "one line per component with a real health check"),
    "demo": (cmd_demo, "transcribe a sample with the local provider"),
}


@contextlib.contextmanager
def _state_lock(config: StackConfig) -> Iterator[None]:
    """One `up`/`down` at a time per state dir."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    with (config.state_dir / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another stt_devstack run on {config.state_dir}", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=Path(".stack"), help="default: .stack")
    common.add_argument(
        "--port-base", type=int, default=18000, help="every port is base + offset (default 18000)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m stt_devstack", description="The one-command local stack."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == "down":
            command.add_argument(
                "--purge",
                action="store_true",
                help="also delete the state dir and any throwaway Postgres cluster",
            )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings()  # partition counts follow the same STT_* settings as the services
        config = StackConfig(
            state_dir=args.state_dir,
            port_base=args.port_base,
            chunks_topic_partitions=settings.chunks_topic_partitions,
            topic_partitions=settings.topic_partitions,
            with_prometheus=True,
        )
        return COMMANDS[args.command][0](config, args)
    except (StackError, ValueError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
