"""The gpudock command: the node agent, and a GpuReplicaSet's history and rollback."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

from gpudock import __version__
from gpudock.cli import retained_commands, rollout_commands
from gpudock.rest.settings import add_api_arguments, api_settings_from
from gpudock.settings import (
    SchedulerSettings,
    SettingsError,
    settings_from,
)
from gpudock.settings_flags import add_agent_arguments, add_scheduler_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpudock", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gpudock {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    agent = commands.add_parser(
        "agent", help="run the node agent (kopf, standalone) for this node's resources")
    add_agent_arguments(agent)
    agent.add_argument("--verbose", action="store_true", help="debug logging")
    scheduler = commands.add_parser(
        "scheduler", help="run the cluster scheduler alone (agents run it by default)")
    scheduler.add_argument("--kubeconfig", help="kubeconfig path (default: in-cluster, "
                           "then $KUBECONFIG or ~/.kube/config)")
    scheduler.add_argument("--namespace", action="append", default=None,
                           help="schedule only this namespace (repeatable; default: all)")
    scheduler.add_argument("--heartbeat-seconds", type=float, default=30.0,
                           help="the agents' heartbeat period: a GpuNode silent for 3 "
                                "periods is not Ready (default: 30)")
    scheduler.add_argument("--liveness-endpoint", help="serve a liveness probe here")
    scheduler.add_argument("--verbose", action="store_true", help="debug logging")
    add_scheduler_arguments(scheduler)
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
    if args.command == "scheduler":
        from gpudock.scheduler.main import run_scheduler  # kopf only for the processes

        return run_scheduler(SchedulerSettings(
            identity=socket.gethostname(), kubeconfig=args.kubeconfig,
            namespaces=tuple(args.namespace or ()),
            lease_namespace=args.release_namespace or os.environ.get("POD_NAMESPACE")
            or "default", policy=args.scheduling_policy or "Binpack",
            heartbeat_seconds=args.heartbeat_seconds), args.liveness_endpoint, args.verbose)
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
