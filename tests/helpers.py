"""Small helpers shared by the test modules.

Not a test module; tests/conftest.py puts this folder on ``sys.path``.
"""

from __future__ import annotations

import torch


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: each test draws from its own, never the global."""
    return torch.Generator().manual_seed(seed)
