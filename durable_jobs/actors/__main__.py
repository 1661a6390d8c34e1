"""``python -m durable_jobs.actors --endpoint ipc://... --actor-id ID ...`` (started by the
supervisor, never by hand)."""

from __future__ import annotations

import argparse

from durable_jobs.actors.actor import ActorArgs, main


def parse(argv: list[str] | None = None) -> ActorArgs:
    parser = argparse.ArgumentParser(prog="python -m durable_jobs.actors")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--actor-id", required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    ns = parser.parse_args(argv)
    return ActorArgs(ns.endpoint, ns.actor_id, ns.supervisor_pid, ns.heartbeat)


if __name__ == "__main__":
    main(parse())
