"""Sending email: the interface the jobs use, and the mock that stands in for a mail server.

Jobs depend on the ``EmailService`` protocol, not on a provider. A real implementation
(SMTP, an email API) would be one more class with the same method, chosen in
``build_email_service``; the job code would not change.
"""

import logging
import threading
import time
from typing import Protocol

from .settings import Settings

logger = logging.getLogger(__name__)


class EmailDeliveryError(Exception):
    """The email could not be handed to the mail server; sending it again may work."""


class EmailService(Protocol):
    """What the background jobs need from an email provider.

    Synchronous on purpose: jobs run in worker threads, where blocking on a mail server is
    exactly what they are for. Raise ``EmailDeliveryError`` (or any exception) on failure;
    the job queue retries.
    """

    def send_welcome_email(self, *, to: str, name: str) -> None: ...


class LoggingEmailService:
    """Sends nothing: logs ``welcome email sent to=<email>`` instead, after a fake delay.

    Two knobs make it behave like a real, imperfect mail server: ``latency_ms`` (every send
    takes that long) and ``fail_first`` (the first N sends of this instance raise). The
    failure counter belongs to the instance, i.e. to one app, and is guarded by a lock
    because several worker threads send at once.
    """

    def __init__(self, *, latency_ms: float = 0, fail_first: int = 0) -> None:
        self._latency_seconds = latency_ms / 1000
        self._fail_first = fail_first
        self._sends = 0
        self._lock = threading.Lock()

    def send_welcome_email(self, *, to: str, name: str) -> None:
        with self._lock:
            self._sends += 1
            send_number = self._sends
        time.sleep(self._latency_seconds)  # the round trip to the mail server
        if send_number <= self._fail_first:
            raise EmailDeliveryError(
                f"mail server unavailable (simulated: send {send_number} of the first "
                f"{self._fail_first} fails, EMAIL_FAIL_FIRST)"
            )
        logger.info("welcome email sent to=%s name=%r", to, name)


def build_email_service(settings: Settings) -> EmailService:
    """The email service of one app: the logging mock, the only implementation here."""
    return LoggingEmailService(
        latency_ms=settings.email_latency_ms, fail_first=settings.email_fail_first
    )
