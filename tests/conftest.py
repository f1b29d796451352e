"""Fixtures shared by the project's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._support import ROOT


@pytest.fixture
def root() -> Path:
    return ROOT
