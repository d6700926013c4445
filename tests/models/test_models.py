"""One conformance suite that every model adapter passes (as zarr's StoreTests)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from model_factories import BIAS, WEIGHTS, reference, torch_conv1x1

import chunkseg
from chunkseg.models.load import (
    CallableAdapter,
    LazyModel,
    ModelSpec,
    Normalization,
    OnnxAdapter,
    TorchAdapter,
    as_model,
    describe_model,
    load_model,
)

NORM = Normalization(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


def _normalized(batch):
    mean = np.array(NORM.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(NORM.std, np.float32).reshape(1, -1, 1, 1)
    return (batch / 255 - mean) / std


class AdapterContract:
    """Subclasses provide ``make(tmp_path)``: an adapter of the reference 1x1 conv with NORM."""

    def make(self, tmp_path):
        raise NotImplementedError

    def test_shape_dtype_values(self, tmp_path):
        model = self.make(tmp_path)
        batch = np.random.default_rng(0).uniform(0, 255, (3, 3, 16, 20)).astype(np.float32)
        out = model(batch)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (3, 2, 16, 20)
        np.testing.assert_allclose(out, reference(_normalized(batch)), rtol=1e-5, atol=1e-5)

    def test_pickle_roundtrip(self, tmp_path):
        model = self.make(tmp_path)
        batch = np.random.default_rng(1).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
        again = pickle.loads(pickle.dumps(model))
        np.testing.assert_allclose(again(batch), model(batch), rtol=1e-6)

    def test_in_predict_equals_pointwise_reference(self, tmp_path):
        model = self.make(tmp_path)
        image = np.random.default_rng(2).integers(0, 256, (70, 90, 3)).astype(np.uint8)
        ds = chunkseg.predict(image, model, tile=32, overlap=8, chunks=48, outputs="logits")
        expected = reference(_normalized(image.transpose(2, 0, 1)[None].astype(np.float32)))[0]
        np.testing.assert_allclose(ds.logits.values, expected, rtol=1e-5, atol=1e-5)
        assert isinstance(describe_model(model), dict)


class TestCallable(AdapterContract):
    def make(self, tmp_path):
        return as_model(reference, normalization=NORM)


class TestTorchModule(AdapterContract):
    def make(self, tmp_path):
        pytest.importorskip("torch")
        model = as_model(torch_conv1x1(), normalization=NORM)
        assert isinstance(model, TorchAdapter)
        return model


class TestTorchScriptFile(AdapterContract):
    def make(self, tmp_path):
        torch = pytest.importorskip("torch")
        path = tmp_path / "conv.pt"
        torch.jit.script(torch_conv1x1()).save(str(path))
        model = as_model(str(path), normalization=NORM)
        assert isinstance(model, LazyModel)
        return model


class TestFactorySpec(AdapterContract):
    def make(self, tmp_path):
        pytest.importorskip("torch")
        return as_model(ModelSpec("model_factories:torch_conv1x1", normalization=NORM))


class TestOnnxFile(AdapterContract):
    def make(self, tmp_path):
        onnx = pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
        from onnx import TensorProto, helper, numpy_helper

        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])
        graph = helper.make_graph(
            [node], "conv1x1",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])],
            initializer=[numpy_helper.from_array(WEIGHTS[:, :, None, None], "w"),
                         numpy_helper.from_array(BIAS, "b")],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        path = tmp_path / "conv.onnx"
        onnx.save(proto, str(path))
        model = OnnxAdapter(path, normalization=NORM)
        assert "conv.onnx" in repr(model)
        return model


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
