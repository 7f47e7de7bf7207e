"""Shared test set-up: where the real CRIU fixture pack lives.

The pack is ../shared/fixtures/criu-4.2 beside the repository (CI lays shared/ there too);
PYCRESTORE_FIXTURES overrides it. A missing pack fails the tests that need it: never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("PYCRESTORE_FIXTURES", REPO.parent / "shared" / "fixtures" / "criu-4.2"))
