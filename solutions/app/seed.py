"""Demo users, created at startup when ``SEED_DEMO_USERS=true``."""

from .security import hash_password
from .store import EmailTakenError, UserRepository

DEMO_PASSWORD = "demo-password"
DEMO_USERS = (
    ("alice@example.com", "Alice Example"),
    ("bob@example.com", "Bob Example"),
    ("carol@example.com", "Carol Example"),
)


async def seed_demo_users(store: UserRepository) -> int:
    """Create the demo users that do not exist yet; return how many were created.

    Checking first makes this safe to run on every startup, and by every instance. With a
    shared database (exercise 10.4), instances starting together may both find a demo user
    missing; the database lets one create it, and the other counts it as there.
    """
    created = 0
    for email, name in DEMO_USERS:
        if await store.get_by_email(email) is None:
            password_hash = await hash_password(DEMO_PASSWORD)
            try:
                await store.create_user(email=email, name=name, password_hash=password_hash)
            except EmailTakenError:
                continue  # another instance was faster
            created += 1
    return created
