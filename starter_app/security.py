"""Password hashing with the standard library's scrypt.

scrypt is slow and memory-hungry on purpose (about 16 MiB and tens of milliseconds per
hash), which is what makes stolen hashes expensive to brute-force. The same slowness would
stall every other request if it ran on the event loop, so both functions hand the work to
a worker thread.
"""

import hashlib
import hmac
import os

from starlette.concurrency import run_in_threadpool

_SCHEME = "scrypt"
_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)


async def hash_password(password: str) -> str:
    """Return ``scrypt$<salt hex>$<hash hex>`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    digest = await run_in_threadpool(_scrypt, password, salt)
    return f"{_SCHEME}${salt.hex()}${digest.hex()}"


async def verify_password(password: str, stored_hash: str | None) -> bool:
    """Check ``password`` against a value made by ``hash_password``.

    Pass ``None`` when no user has the email: scrypt still runs once, so an unknown email
    takes as long to reject as a wrong password, and response times do not reveal which
    emails are registered.
    """
    if stored_hash is None:
        await run_in_threadpool(_scrypt, password, bytes(_SALT_BYTES))
        return False
    scheme, salt_hex, digest_hex = stored_hash.split("$")
    if scheme != _SCHEME:
        raise ValueError(f"unsupported password hash scheme {scheme!r}")
    digest = await run_in_threadpool(_scrypt, password, bytes.fromhex(salt_hex))
    # compare_digest takes the same time wherever the first differing byte is.
    return hmac.compare_digest(digest, bytes.fromhex(digest_hex))
