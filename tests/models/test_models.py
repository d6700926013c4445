"""Model specs, the per-process cache, Normalization and bad specs (the adapters' shared
contract is tests/models/test_conformance.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from model_factories import reference

import chunkseg
from chunkseg.errors import InvalidTypeError, InvalidValueError
from chunkseg.models.adapters import CallableAdapter
from chunkseg.models.load import as_model, load_model
from chunkseg.models.spec import ModelSpec, Normalization


def test_spec_loaded_once_per_process():
    pytest.importorskip("torch")
    spec = ModelSpec("model_factories:torch_conv1x1", normalization=Normalization(scale=0.5))
    load_model.cache_clear()
    model = as_model(spec)
    image = np.zeros((100, 100, 3), np.float32)
    chunkseg.predict(image, model, tile=32, overlap=8, chunks=24, outputs="logits").logits.compute()
    info = load_model.cache_info()
    assert info.misses == 1 and info.hits > 10
    assert len(pickle.dumps(model)) < 1000  # the spec travels, not the weights


def test_numpy_factory_spec():
    model = as_model("model_factories:numpy_conv1x1")
    batch = np.ones((1, 3, 4, 4), np.float32)
    np.testing.assert_allclose(model(batch), reference(batch))


def test_normalization_broadcast_and_errors():
    n = Normalization(scale=2.0, mean=1.0, std=4.0)
    np.testing.assert_allclose(n(np.full((1, 2, 1, 1), 3.0, np.float32)), 1.25)
    assert Normalization().is_identity
    with pytest.raises(ValueError, match="std"):
        Normalization(std=0.0)
    with pytest.raises(ValueError, match="channels"):
        Normalization(mean=(1.0, 2.0))(np.zeros((1, 3, 2, 2), np.float32))


def test_normalization_dict_roundtrip():
    for norm in (Normalization(), Normalization(scale=1 / 255, mean=(0.5, 0.4), std=(0.2, 0.3)),
                 Normalization(scale=2, mean=1.0, std=4.0)):
        d = norm.to_dict()
        assert json.loads(json.dumps(d)) == d
        again = Normalization.from_dict(json.loads(json.dumps(d)))
        assert again == norm and again.to_dict() == d
    assert Normalization.from_dict({}) == Normalization()  # missing keys take their defaults
    assert Normalization.from_dict({"mean": [0.5]}) == Normalization(mean=0.5)
    assert Normalization.from_dict({"scale": 2}).to_dict()["scale"] == 2  # kept as given
    with pytest.raises(InvalidTypeError, match="keys"):
        Normalization.from_dict({"scale": 1.0, "offset": 0.0})
    with pytest.raises(InvalidTypeError, match="mapping"):
        Normalization.from_dict([1.0, 0.0, 1.0])
    with pytest.raises(InvalidTypeError, match="scale"):
        Normalization.from_dict({"scale": "1/255"})
    with pytest.raises(InvalidValueError, match="std"):
        Normalization.from_dict({"std": [0.0]})


def test_normalization_affine_is_the_formula():
    norm = Normalization(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    a, b = norm.affine(3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(norm(x), a[None, :, None, None] * x + b[None, :, None, None],
                               rtol=1e-5, atol=1e-5)


def test_specs_are_frozen_slotted_data():
    norm = Normalization(scale=0.5)
    spec = ModelSpec("model_factories:numpy_conv1x1", normalization=norm)
    for obj, name in ((norm, "scale"), (spec, "device")):
        assert not hasattr(obj, "__dict__")
        with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
            setattr(obj, name, None)
        assert pickle.loads(pickle.dumps(obj)) == obj and hash(pickle.loads(pickle.dumps(obj)))
    assert spec.to_dict() == {"source": "model_factories:numpy_conv1x1", "device": "cpu",
                              "normalization": norm.to_dict(), "options": {}}


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (42, TypeError, "model"),
        ("no_such_module_xyz:f", ValueError, "could not be resolved"),
        ("missing.onnx", FileNotFoundError, "does not exist"),
        ("missing.pt", FileNotFoundError, "does not exist"),
        ("weights.h5", ValueError, "not understood"),
    ],
)
def test_bad_model_specs(bad, exc, match):
    with pytest.raises(exc, match=match):
        model = as_model(bad)
        model(np.zeros((1, 1, 8, 8), np.float32))


def test_callable_adapter_requires_callable():
    with pytest.raises(TypeError, match="callable"):
        CallableAdapter(3)
