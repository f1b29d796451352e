"""Run the app: ``python -m solutions.app`` serves the API with uvicorn (the default), and
``python -m solutions.app worker`` runs background jobs (exercise 10.2). Both read HOST,
PORT, JOBS_DB_PATH, ... from the environment."""

import argparse

import uvicorn

from .job_worker import run_standalone_worker
from .main import configure_logging, create_app
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m solutions.app", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "worker"),
        default="serve",
        help="serve: the HTTP API (default); worker: run queued jobs from JOBS_DB_PATH",
    )
    command = parser.parse_args(argv).command
    settings = Settings()
    if command == "worker":
        configure_logging(settings.log_level)
        run_standalone_worker(settings)
        return
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
