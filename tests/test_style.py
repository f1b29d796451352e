"""The code base stays ruff-clean (lint and format), as CI would otherwise let it drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUFF = str(Path(sys.executable).parent / "ruff")


def test_ruff_lint_is_clean(root: Path) -> None:
    done = subprocess.run([RUFF, "check", "."], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean(root: Path) -> None:
    done = subprocess.run(
        [RUFF, "format", "--check", "."], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
