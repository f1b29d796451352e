"""Demo users, created at startup when ``SEED_DEMO_USERS=true``."""

from .security import hash_password
from .store import UserStore

DEMO_PASSWORD = "demo-password"
DEMO_USERS = (
    ("alice@example.com", "Alice Example"),
    ("bob@example.com", "Bob Example"),
    ("carol@example.com", "Carol Example"),
)


async def seed_demo_users(store: UserStore) -> int:
    """Create the demo users that do not exist yet; return how many were created.

    Checking first makes this safe to run on every startup, and by every instance.
    """
    created = 0
    for email, name in DEMO_USERS:
        if await store.get_by_email(email) is None:
            password_hash = await hash_password(DEMO_PASSWORD)
            await store.create_user(email=email, name=name, password_hash=password_hash)
            created += 1
    return created
