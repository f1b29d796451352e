"""Logging set-up, apart from ``main.py`` so that the supervisor process can log without
importing FastAPI (see ``supervisor.py``: the less it imports, the faster it starts)."""

import logging
import sys

from .tracing import LOG_FORMAT_WITH_ID, RequestIdFilter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(level: str) -> None:
    """Print log records to stdout, one line each, at ``level`` for this package.

    Each line ends with ``request_id=<id>`` (exercise 10.4, tracing): the id of the request
    being handled, or of the request that enqueued the job being run, or ``-``. A
    ``RequestIdFilter`` on every handler of the root logger puts it in each record; on the
    handler, not on a logger, because a logger's filters see only the records logged on
    that very logger.

    ``basicConfig`` does nothing once the root logger has a handler, so calling this for
    every app adds no duplicate handlers, and a host that configured logging itself
    (pytest, a log shipper) keeps its setup (its handlers get the filter, which only adds
    an attribute). Uvicorn configures only its own loggers.
    """
    logging.basicConfig(stream=sys.stdout, format=LOG_FORMAT_WITH_ID)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
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
