"""Fixtures of the merger tests (the S3/moto and store fixtures come from tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# helpers.py sits beside this file; importlib import mode does not put test dirs on sys.path.
sys.path.insert(0, str(Path(__file__).parent))
