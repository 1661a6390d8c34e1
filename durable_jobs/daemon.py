"""The ``durable-supervisor`` entry point: it records signals before anything else loads.

Importing the command line (SQLAlchemy, the app) takes a few hundred milliseconds, during
which SIGTERM would kill the daemon with a signal's exit status and SIGUSR1 would kill it
outright. This module imports nothing heavy before it asks for the signals to be recorded;
the supervisor acts on them once it runs (``supervisor.signals.record_early``).
"""

from __future__ import annotations

import sys


def main() -> int:
    """``durable-supervisor --config jobs.toml [--check]``, see ``durable_jobs.cli.main``."""
    from durable_jobs.supervisor.signals import record_early

    record_early()
    try:
        from durable_jobs.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # a second SIGTERM/SIGINT while it started: stopped as asked
        return 0


if __name__ == "__main__":
    sys.exit(main())
