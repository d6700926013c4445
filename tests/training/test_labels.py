"""LabelSpec: stored label values -> class indices (chunkseg.training.labels)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from chunkseg.training.labels import LabelSpec


def test_label_spec_round_trips_and_pickles():
    for spec in (LabelSpec(), LabelSpec(label_map={255: 0, 0: 1}, ignore_index=-1, classes=2),
                 LabelSpec(classes=("bg", "fg"), ignore_index=7)):
        assert LabelSpec.from_dict(spec.to_dict()) == spec
        clone = pickle.loads(pickle.dumps(spec))
        raw = np.array([[0, 1, 7]], np.uint8) if spec.label_map is None else np.array([[255, 0, 3]])
        np.testing.assert_array_equal(clone.to_classes(raw, 0), spec.to_classes(raw, 0))
    spec = LabelSpec(classes=("bg", "fg"), ignore_index=7)
    assert (spec.count, spec.names, spec.num_classes) == (2, ("bg", "fg"), 2)
    assert LabelSpec(label_map={255: 0, 0: 3}).num_classes == 4


def test_label_spec_errors():
    with pytest.raises(TypeError, match="`ignore_index` must be an int"):
        LabelSpec(ignore_index=1.5)
    with pytest.raises(ValueError, match="`ignore_index` must not be a class index"):
        LabelSpec(classes=3, ignore_index=1)
    with pytest.raises(ValueError, match="below classes=2"):
        LabelSpec(label_map={0: 2}, classes=2)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        LabelSpec(classes=2).to_classes(np.array([3]), 0)
    with pytest.raises(ValueError, match="unknown keys"):
        LabelSpec.from_dict({"classes": 2, "colour": "red"})
