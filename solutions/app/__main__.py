"""Run the app: ``python -m solutions.app`` serves the API, ``python -m solutions.app worker``
runs background jobs (exercise 10.2). Both read HOST, PORT, JOBS_DB_PATH, ... from the
environment.

Serving runs under a small supervisor (exercise 10.3, ``supervisor.py``): the process you
start owns the listening socket and runs the server in a child process, which is what lets
SIGHUP restart the server without refusing a connection. SIGTERM and SIGINT stop it
gracefully, with exit code 0. ``serve --single-process`` runs the server in this very
process instead: no graceful restart, one process fewer (for a debugger, a profiler, or a
platform without fork()).

This module imports only the settings until it knows what to run: the supervisor never
loads the app, so that each server it starts loads the app's code as it is on disk then.
"""

import argparse
import os
import socket
from collections.abc import Callable

from .logs import configure_logging
from .settings import Settings


def serve_child(settings: Settings, sock: socket.socket, tell: Callable[[bytes], None]) -> int:
    """What a supervised child runs: the server, on the supervisor's socket."""
    from .server import serve  # here: the app's code loads in the child

    return serve(
        settings, sock=sock, on_ready=lambda: tell(b"ready"), on_shutdown=lambda: tell(b"stopping")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solutions.app", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "worker"),
        default="serve",
        help="serve: the HTTP API (default); worker: run queued jobs from JOBS_DB_PATH",
    )
    parser.add_argument(
        "--single-process",
        action="store_true",
        help="serve without the supervisor (no graceful restart on SIGHUP)",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    if args.command == "worker":
        from .job_worker import run_standalone_worker

        run_standalone_worker(settings)
        return 0
    if args.single_process or not hasattr(os, "fork"):
        from .server import serve

        return serve(settings)
    from .supervisor import supervise

    return supervise(settings, serve_child)


if __name__ == "__main__":
    raise SystemExit(main())
