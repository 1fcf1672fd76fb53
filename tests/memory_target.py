"""A light target for the fresh-process memory probe (imports numpy only)."""

import numpy as np


def allocate(mb: int) -> None:
    """Touch ``mb`` MiB of memory."""
    a = np.ones(mb * 2**20 // 8)
    a.sum()
