"""Users API: the starter app of Module 10 (Architecture & Scalability).

Build an app with ``create_app()``; run one with ``python -m starter_app``.
"""

from .main import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
