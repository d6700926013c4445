"""The connectivity rule shared by chunkseg.label and the viz's per-tile components."""

from __future__ import annotations

import numpy as np
import pytest

from chunkseg.errors import InvalidValueError
from chunkseg.kernels.components import check_connectivity, foreground_structure


def test_check_connectivity():
    assert check_connectivity(1) == 1 and check_connectivity(np.int64(2)) == 2
    assert foreground_structure(2).all() and foreground_structure(1).sum() == 5
    for bad in (0, 3, True, np.bool_(True), "1", None):
        with pytest.raises(InvalidValueError, match=r"`connectivity` must be 1 \(pixels"):
            check_connectivity(bad)
