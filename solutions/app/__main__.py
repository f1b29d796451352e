"""Serve the API with uvicorn: ``python -m starter_app`` (reads HOST, PORT, ... from the env)."""

import uvicorn

from .main import create_app
from .settings import Settings


def main() -> None:
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
