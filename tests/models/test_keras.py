"""Keras 3 models (``.keras`` files and models in memory) through Keras' torch backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: read once, then
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":  # pragma: no cover - a process that chose another one
    pytest.skip(f"keras was imported with the {keras.backend.backend()!r} backend, not torch",
                allow_module_level=True)

from model_factories import keras_conv1x1, keras_unet, reference  # noqa: E402
from test_conformance import NORM, _normalized  # noqa: E402

import chunkseg  # noqa: E402
from chunkseg.errors import MissingDependencyError, NotFoundError  # noqa: E402
from chunkseg.models.adapters import KerasAdapter  # noqa: E402
from chunkseg.models.load import as_model, describe_model, load_model  # noqa: E402
from chunkseg.models.spec import ModelSpec  # noqa: E402
from chunkseg.plan import plan_tiles  # noqa: E402

# Keras' own model.save (Keras 3.15, torch 2.13, numpy 2) warns; the adapter itself does not.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

UNET_RADIUS = 9
"""The U-Net's output at a pixel depends on the input within this many pixels (measured below)."""


def _np(y):
    return y.detach().cpu().numpy()  # the torch backend's tensors (no numpy-2 copy warning)


def _save(model, path):
    model.save(str(path))
    return str(path)


# -- a U-Net through the engine: tiled equals untiled where the tiles see enough context --------

@pytest.fixture(scope="module")
def unet_file(tmp_path_factory):
    return _save(keras_unet(), tmp_path_factory.mktemp("keras") / "unet.keras")


def _untiled(path, image):
    """The Keras model on the whole normalised image, zero-padded at its border: (K, H, W)."""
    model = keras.saving.load_model(path, compile=False)
    x = _normalized(image.transpose(2, 0, 1)[None].astype(np.float32)).transpose(0, 2, 3, 1)
    return _np(model(x, training=False))[0].transpose(2, 0, 1)


def _image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape + (3,)).astype(np.uint8)


def test_unet_receptive_field(unet_file):
    model = keras.saving.load_model(unet_file, compile=False)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    y = _np(model(x))
    for py, px in ((32, 32), (33, 31)):
        x2 = x.copy()
        x2[0, py, px] += 5.0
        ys, xs = np.nonzero(np.abs(_np(model(x2)) - y).max(-1)[0])
        reach = max(py - ys.min(), ys.max() - py, px - xs.min(), xs.max() - px)
        assert reach == UNET_RADIUS


def test_unet_one_tile_equals_model(unet_file):
    image = _image((48, 64), 3)
    ds = chunkseg.predict(image, unet_file, tile=(48, 64), overlap=0, window="gaussian",
                          normalization=NORM, outputs="logits")
    assert ds.attrs["model"]["kind"] == "spec" and ds.attrs["kernel"] == "numpy"
    np.testing.assert_allclose(ds.logits.values, _untiled(unet_file, image), rtol=1e-5, atol=1e-5)


TILE, OVERLAP, CHUNKS = 64, 24, 80  # halo 12 before and after each stride cell of 40 (even)


def _coverage(shape):
    """Per pixel, how many tiles cover it (the product of the per-axis counts)."""
    plan = plan_tiles(shape, TILE, OVERLAP, CHUNKS)
    counts = []
    for axis, size in enumerate(shape):
        c = np.zeros(size, int)
        for o in plan.tile_origins()[axis]:
            c[max(o, 0): o + TILE] += 1
        counts.append(c)
    return np.outer(*counts)


def _interior(shape, margin=12):
    """Pixels farther than the U-Net's reach from the image border (where the tiles see the
    reflect padding and the untiled model zeros)."""
    inside = np.zeros(shape, bool)
    inside[margin:-margin, margin:-margin] = True
    return inside


def test_unet_tiled_uniform_window_single_cover_matches(unet_file):
    # With the uniform window a pixel covered by one tile only lies >= OVERLAP (24) pixels
    # from that tile's edges, beyond the U-Net's reach (9): it must equal the untiled model.
    # Pixels in the overlaps average a tile that sees them near its edge: they differ.
    shape = (150, 170)
    assert OVERLAP // 2 > UNET_RADIUS
    image = _image(shape, 4)
    ds = chunkseg.predict(image, unet_file, tile=TILE, overlap=OVERLAP, window="uniform",
                          chunks=CHUNKS, normalization=NORM, outputs="logits")
    got, want = ds.logits.values, _untiled(unet_file, image)
    cover, inside = _coverage(shape), _interior(shape)
    single = inside & (cover == 1)
    assert single.sum() > 0.1 * inside.sum()
    np.testing.assert_allclose(got[:, single], want[:, single], rtol=1e-5, atol=1e-5)
    assert np.abs(got - want)[:, inside & (cover > 1)].max() > 1e-3  # the edges do matter


def test_unet_tiled_crop_window_matches_everywhere_inside(unet_file):
    # A window ~0 outside each tile's stride cell hands every pixel to the one tile that sees it
    # with 12 pixels of context on each side (> the U-Net's reach of 9): the whole image but
    # its 12-pixel border must equal the untiled model.
    shape = (150, 170)
    halo, stride = OVERLAP // 2, TILE - OVERLAP
    w1 = np.full(TILE, 1e-6)
    w1[halo: halo + stride] = 1.0
    image = _image(shape, 5)
    ds = chunkseg.predict(image, unet_file, tile=TILE, overlap=OVERLAP, window=np.outer(w1, w1),
                          chunks=CHUNKS, normalization=NORM, outputs="logits")
    got, want = ds.logits.values, _untiled(unet_file, image)
    inside = _interior(shape)
    np.testing.assert_allclose(got[:, inside], want[:, inside], rtol=1e-5, atol=1e-5)


# -- data format, description, errors -----------------------------------------------------------

def test_data_format_override_and_options(tmp_path):
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    batch = np.random.default_rng(6).normal(size=(2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(KerasAdapter(path)(batch), reference(batch), rtol=1e-5, atol=1e-5)
    spec = ModelSpec(path, options=(("data_format", "channels_last"),))
    assert load_model(spec).data_format == "channels_last"
    with pytest.raises(ValueError, match="data_format"):
        KerasAdapter(path, data_format="NHWC")
    with pytest.raises(ValueError, match="only hold 'data_format'"):
        load_model(ModelSpec(path, options=(("custom_objects", None),)))


def test_describe_model(tmp_path):
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    d = describe_model(KerasAdapter(path, normalization=NORM))
    assert d["kind"] == "keras" and d["source"] == path and d["name"] == "conv1x1"
    assert d["data_format"] == "channels_last" and d["backend"] == "torch"
    assert d["normalization"] == NORM.to_dict()
    assert describe_model(as_model(keras_conv1x1()))["source"] is None
    json.dumps(d)


def test_keras_model_must_take_image_batches():
    inputs = keras.Input((5,))
    with pytest.raises(ValueError, match="4-D"):
        KerasAdapter(keras.Model(inputs, keras.layers.Dense(2)(inputs)))


def test_in_memory_model_on_another_device():
    import torch

    # with a GPU, the model's CPU weights are refused; without, the device itself (not here)
    match = "weights are on 'cpu'" if torch.cuda.is_available() else "'cuda', which is not available"
    with pytest.raises(ValueError, match=match):
        KerasAdapter(keras_conv1x1(), device="cuda")


def test_bad_and_missing_keras_files(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "missing.keras")))
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    with pytest.raises(ValueError, match="must be a Keras 3 model"):
        load_model(ModelSpec(str(bad)))
    with pytest.raises(TypeError, match="keras.Model"):
        KerasAdapter(42)


def test_missing_keras_names_the_extra(tmp_path, monkeypatch):
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    monkeypatch.setitem(sys.modules, "keras", None)  # `import keras` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "chunkseg\[keras\]"'):
        load_model(ModelSpec(path))


def test_keras_env_asks_for_another_backend(tmp_path, monkeypatch):
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    monkeypatch.delitem(sys.modules, "keras")  # as if not imported yet (restored afterwards)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(MissingDependencyError, match="KERAS_BACKEND=torch"):
        KerasAdapter(path)


def test_keras_imported_with_another_backend(tmp_path, monkeypatch):
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(MissingDependencyError, match="'jax' backend.*KERAS_BACKEND=torch"):
        KerasAdapter(path)


def test_unset_backend_becomes_torch(tmp_path):
    # A fresh process, KERAS_BACKEND unset and keras.json asking for jax: chunkseg imports
    # keras with the torch backend itself.
    path = _save(keras_conv1x1(), tmp_path / "conv.keras")
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    code = ("import sys, numpy as np; from chunkseg.models import KerasAdapter; "
            "m = KerasAdapter(sys.argv[1]); out = m(np.ones((1, 3, 4, 4), np.float32)); "
            "import keras; print(keras.backend.backend(), out.shape)")
    res = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "torch"
