"""Helpers for the project's own tests: app packages to grade, built on the fly."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "solutions" / "app"


def copy_reference(tmp_path: Path, name: str) -> Path:
    """A copy of the reference app as package `name` under tmp_path (imports are relative)."""
    target = tmp_path / name
    shutil.copytree(REFERENCE, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def patch_file(path: Path, old: str, new: str) -> None:
    """Replace `old` by `new` exactly once: a mutant whose anchor vanished must not pass
    silently as 'caught'."""
    text = path.read_text(encoding="utf-8")
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"mutant anchor found {count} times in {path.name}: {old!r}")
    path.write_text(text.replace(old, new), encoding="utf-8")


def write_package(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    """A small package written from source snippets (for the broken-app cases)."""
    package = tmp_path / name
    package.mkdir()
    for filename, source in files.items():
        (package / filename).write_text(textwrap.dedent(source), encoding="utf-8")
    return package
