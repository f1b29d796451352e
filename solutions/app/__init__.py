"""Users API: the reference solution of Module 10 (Architecture & Scalability).

Build an app with ``create_app()``; run one with ``python -m solutions.app``.

The two names are imported on first use (PEP 562), not with the package: ``python -m
solutions.app`` imports this package first, and its supervisor process must not load FastAPI
and the app (see ``__main__.py``).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .main import create_app
    from .settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .main import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
