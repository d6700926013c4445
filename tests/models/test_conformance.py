"""One conformance suite that every model adapter passes (as zarr's StoreTests).

Each case builds the same model, the reference 1x1 convolution of ``model_factories`` with the
normalisation :data:`NORM`, through one adapter and one way of naming it: a callable, a torch
module, a TorchScript file, a ``module:factory`` spec, an ONNX file (when onnx and onnxruntime
are installed) and Keras 3 models (when Keras with the torch backend is). Given ``crop=1`` it
builds the same model cropping a pixel off each side of its output instead: a model returning
the wrong shape, which the engine must refuse with ModelOutputError.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from model_factories import BIAS, WEIGHTS, keras_conv1x1, reference, torch_conv1x1

import chunkseg
from chunkseg.errors import MissingDependencyError, ModelOutputError
from chunkseg.models import ModelAdapter
from chunkseg.models.adapters import (
    CallableAdapter,
    KerasAdapter,
    OnnxAdapter,
    TorchAdapter,
    _import_keras,
)
from chunkseg.models.load import LazyModel, as_model, describe_model, load_model
from chunkseg.models.spec import ModelSpec, Normalization

# Keras' own model.save (Keras 3.15, torch 2.13, numpy 2) warns; the adapter itself does not.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NORM = Normalization(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


def _normalized(batch):
    mean = np.array(NORM.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(NORM.std, np.float32).reshape(1, -1, 1, 1)
    return (batch / 255 - mean) / std


def _crop_options(crop: int) -> tuple:
    return (("crop", crop),) if crop else ()


# -- the cases: one maker per adapter and way of naming it --------------------------------------

def _callable(tmp_path, crop):
    fn = reference if not crop else (lambda batch: reference(batch)[:, :, crop:-crop, crop:-crop])
    model = as_model(fn, normalization=NORM)
    assert isinstance(model, CallableAdapter)
    return model


def _torch_module(tmp_path, crop):
    pytest.importorskip("torch")
    model = as_model(torch_conv1x1(crop=crop), normalization=NORM)
    assert isinstance(model, TorchAdapter)
    return model


def _torchscript_file(tmp_path, crop):
    torch = pytest.importorskip("torch")
    path = tmp_path / "conv.pt"
    torch.jit.script(torch_conv1x1(crop=crop)).save(str(path))
    model = as_model(str(path), normalization=NORM)
    assert isinstance(model, LazyModel)
    return model


def _factory_spec(tmp_path, crop):
    pytest.importorskip("torch")
    return as_model(ModelSpec("model_factories:torch_conv1x1", normalization=NORM,
                              options=_crop_options(crop)))


def _onnx_file(tmp_path, crop):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], kernel_shape=[1, 1])]
    initializer = [numpy_helper.from_array(WEIGHTS[:, :, None, None], "w"),
                   numpy_helper.from_array(BIAS, "b")]
    if crop:
        nodes.append(helper.make_node("Slice", ["conv", "starts", "ends", "axes"], ["y"]))
        initializer += [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
                        (("starts", [crop, crop]), ("ends", [-crop, -crop]), ("axes", [2, 3]))]
    else:
        nodes.append(helper.make_node("Identity", ["conv"], ["y"]))
    graph = helper.make_graph(
        nodes, "conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h2", "w2"])],
        initializer=initializer,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(proto, str(path))
    model = OnnxAdapter(path, normalization=NORM)
    assert "conv.onnx" in repr(model)
    return model


def _keras():
    """Keras 3 with the torch backend, or a skip saying why not."""
    try:
        return _import_keras()
    except MissingDependencyError as err:
        pytest.skip(str(err))


def _keras_save(tmp_path, crop, data_format="channels_last"):
    _keras()
    path = tmp_path / f"conv_{data_format}.keras"
    keras_conv1x1(data_format, crop=crop).save(str(path))
    return str(path)


def _keras_file(tmp_path, crop):
    model = as_model(_keras_save(tmp_path, crop), normalization=NORM)
    assert isinstance(model, LazyModel)
    assert isinstance(load_model(model.spec), KerasAdapter)
    return model


def _keras_adapter_file(tmp_path, crop):
    model = KerasAdapter(_keras_save(tmp_path, crop), normalization=NORM)
    assert model.data_format == "channels_last" and "conv_channels_last.keras" in repr(model)
    assert len(pickle.dumps(model)) < 1000  # by path: the weights do not travel
    return model


def _keras_in_memory(tmp_path, crop):
    _keras()
    model = as_model(keras_conv1x1(crop=crop), normalization=NORM)
    assert isinstance(model, KerasAdapter)  # not a TorchAdapter, though it is a torch module
    return model


def _keras_channels_first_file(tmp_path, crop):
    model = KerasAdapter(_keras_save(tmp_path, crop, "channels_first"), normalization=NORM)
    assert model.data_format == "channels_first"
    return model


def _keras_factory_spec(tmp_path, crop):
    _keras()
    return as_model(ModelSpec("model_factories:keras_conv1x1", normalization=NORM,
                              options=_crop_options(crop)))


CASES = {
    "callable": _callable,
    "torch-module": _torch_module,
    "torchscript-file": _torchscript_file,
    "factory-spec": _factory_spec,
    "onnx-file": _onnx_file,
    "keras-file": _keras_file,
    "keras-adapter-file": _keras_adapter_file,
    "keras-in-memory": _keras_in_memory,
    "keras-channels-first-file": _keras_channels_first_file,
    "keras-factory-spec": _keras_factory_spec,
}


@pytest.fixture(params=list(CASES))
def make(request, tmp_path):
    """``make(crop=0)``: the case's adapter of the reference model (``crop`` > 0: cropped)."""
    return lambda crop=0: CASES[request.param](tmp_path, crop)


# -- the contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 3, 16, 20), (1, 3, 7, 5)])
def test_shape_dtype_values(make, shape):
    """``(N, C_in, h, w)`` float32 -> ``(N, K, h, w)`` float32 ndarray: the reference."""
    model = make()
    batch = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    out = model(batch)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == (shape[0], 2) + shape[2:]
    np.testing.assert_allclose(out, reference(_normalized(batch)), rtol=1e-5, atol=1e-5)


def test_normalization_applied_once_and_recorded(make):
    """The adapter applies NORM (Normalization's own formula), once, and records it."""
    model = make()
    batch = np.random.default_rng(3).uniform(0, 255, (2, 3, 8, 12)).astype(np.float32)
    np.testing.assert_allclose(model(batch), reference(NORM(batch)), rtol=1e-5, atol=1e-5)
    assert isinstance(model, ModelAdapter)
    d = describe_model(model)
    assert d == model.describe() and d["normalization"] == NORM.to_dict()
    assert json.loads(json.dumps(d)) == d


def test_pickle_roundtrip(make):
    model = make()
    batch = np.random.default_rng(1).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again(batch), model(batch), rtol=1e-6)


def test_in_predict_equals_pointwise_reference(make):
    model = make()
    image = np.random.default_rng(2).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    ds = chunkseg.predict(image, model, tile=32, overlap=8, chunks=48, outputs="logits")
    expected = reference(_normalized(image.transpose(2, 0, 1)[None].astype(np.float32)))[0]
    np.testing.assert_allclose(ds.logits.values, expected, rtol=1e-5, atol=1e-5)
    assert isinstance(describe_model(model), dict)


def test_wrong_output_shape_is_refused(make):
    """A model whose output is not the tile's size fails the run with ModelOutputError."""
    model = make(crop=1)
    image = np.random.default_rng(4).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    with pytest.raises(ModelOutputError, match="shape"):
        ds = chunkseg.predict(image, model, tile=32, overlap=8, chunks=48, outputs="logits")
        ds.logits.compute()
