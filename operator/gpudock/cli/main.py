"""The gpudock command: the node agent, and a GpuReplicaSet's history and rollback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gpudock import __version__
from gpudock.cli import retained_commands, rollout_commands
from gpudock.rest.settings import add_api_arguments, api_settings_from
from gpudock.settings import SettingsError, add_agent_arguments, settings_from


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpudock", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gpudock {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    agent = commands.add_parser(
        "agent", help="run the node agent (kopf, standalone) for this node's resources")
    add_agent_arguments(agent)
    agent.add_argument("--verbose", action="store_true", help="debug logging")
    rollout_commands.add_arguments(commands)
    retained_commands.add_arguments(commands)
    api = commands.add_parser(
        "api", help="serve gpu-docker-api v0.0.3's REST API on the custom resources")
    add_api_arguments(api)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "agent":
        try:
            settings = settings_from(args)
        except (SettingsError, ValueError) as exc:
            parser.error(str(exc))
        from gpudock.agent.main import run_agent  # kopf is imported only for the agent

        return run_agent(settings, verbose=args.verbose)
    if args.command == "api":
        try:
            api_settings = api_settings_from(args)
        except ValueError as exc:
            parser.error(str(exc))
        from gpudock.rest.server import run_api  # FastAPI is imported only for the API

        return run_api(api_settings)
    if args.command in ("history", "rollback"):
        return rollout_commands.run(args)
    if args.command == "purge":
        return retained_commands.run_purge(args)
    parser.error(f"unknown command {args.command}")  # pragma: no cover - argparse refuses
    return 2


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig()
    sys.exit(main())
