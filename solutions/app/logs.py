"""Logging set-up, apart from ``main.py`` so that the supervisor process can log without
importing FastAPI (see ``supervisor.py``: the less it imports, the faster it starts)."""

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Print log records to stdout, one line each, at ``level`` for this package.

    ``basicConfig`` does nothing once the root logger has a handler, so calling this for
    every app adds no duplicate handlers, and a host that configured logging itself
    (pytest, a log shipper) keeps its setup. Uvicorn configures only its own loggers.
    """
    logging.basicConfig(stream=sys.stdout, format=LOG_FORMAT)
    logging.getLogger(__package__).setLevel(level)


def flush_log_handlers() -> None:
    """Write out whatever any log handler still buffers, and the standard streams.

    The last step of a shutdown: a handler that buffers (a file, a log shipper's) would lose
    its last records if the process ended now, and those are the records that say how the
    shutdown went.
    """
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
