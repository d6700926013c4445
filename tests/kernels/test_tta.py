"""Test-time augmentation: equal to a whole-image reference, equivariant, chunk-independent."""

from __future__ import annotations

import numpy as np
import pytest
from model_factories import numpy_conv3x3, numpy_two_class

import chunkseg
from chunkseg.cli import main
from chunkseg.kernels.tta import TTAModel, check_tta, tta_transforms

torch = pytest.importorskip("torch")

# the 8 symmetries of the square written out one by one, apart from chunkseg.kernels.tta's (k, mirror)
# pairs: each maps an (..., H, W) array, with its inverse
D4 = {
    "identity": (lambda a: a, lambda a: a),
    "mirror x": (lambda a: a[..., ::-1], lambda a: a[..., ::-1]),
    "mirror y": (lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, :]),
    "rot 180": (lambda a: a[..., ::-1, ::-1], lambda a: a[..., ::-1, ::-1]),
    "transpose": (lambda a: np.swapaxes(a, -1, -2), lambda a: np.swapaxes(a, -1, -2)),
    "anti-transpose": (lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
                       lambda a: np.swapaxes(a[..., ::-1, ::-1], -1, -2)),
    "rot 90": (lambda a: np.swapaxes(a, -1, -2)[..., ::-1, :],
               lambda a: np.swapaxes(a[..., ::-1, :], -1, -2)),
    "rot 270": (lambda a: np.swapaxes(a, -1, -2)[..., ::-1],
                lambda a: np.swapaxes(a[..., ::-1], -1, -2)),
}
FLIPS = ("identity", "mirror x", "mirror y", "rot 180")


def _conv_module(seed=0):
    """An asymmetric 5x5 conv (1 -> 2 classes): no symmetry of the square leaves it unchanged."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(1, 2, kernel_size=5, padding=2)
    return conv.eval()


def _reference(model, image, names):
    """Mean over the listed symmetries of inverse(model(transform(image))), whole image."""
    x = image[None, None].astype(np.float32)
    outs = [inv(model(np.ascontiguousarray(fwd(x)))) for fwd, inv in (D4[n] for n in names)]
    return np.mean(outs, axis=0)[0]


@pytest.mark.parametrize("mode, names", [("flips", FLIPS), ("d4", tuple(D4))])
def test_whole_image_tile_equals_reference(mode, names):
    module = _conv_module()
    adapter = chunkseg.as_model(module)
    image = np.random.default_rng(0).uniform(0, 1, (48, 48)).astype(np.float32)
    expected = _reference(adapter, image, names)
    plain = _reference(adapter, image, ("identity",))
    assert np.abs(expected - plain).max() > 1e-2  # the augmentation changes the logits
    for kernel in ("numpy", "torch"):
        ds = chunkseg.predict(image, module, tile=48, overlap=0, window="uniform", tta=mode,
                              outputs="logits", kernel=kernel)
        np.testing.assert_allclose(ds.logits.values, expected, rtol=1e-5, atol=1e-5)
        assert ds.attrs["tta"] == mode


@pytest.mark.parametrize("mode, names", [("flips", FLIPS), ("d4", tuple(D4))])
def test_tta_model_is_equivariant(mode, names):
    """TTA(model)(g x) = g TTA(model)(x) for every symmetry g it averages over."""
    model = TTAModel(numpy_conv3x3(), mode)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 1, 24, 24)).astype(np.float32)
    base = model(batch)
    for name in names:
        fwd, _ = D4[name]
        np.testing.assert_allclose(model(np.ascontiguousarray(fwd(batch))), fwd(base),
                                   rtol=1e-5, atol=1e-5, err_msg=name)


def test_transforms_are_the_group():
    assert len(tta_transforms("flips")) == 4 and len(tta_transforms("d4")) == 8
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    square = np.arange(16.0).reshape(1, 1, 4, 4)
    flips = {TTAModel(lambda b: b, "flips").transforms[i] for i in range(4)}
    assert (0, False) in flips
    # every forward map is distinct (a group of 8 elements) and inverted exactly
    from chunkseg.kernels.tta import _forward, _inverse

    images = {_forward(square, k, m).tobytes() for k, m in tta_transforms("d4")}
    assert len(images) == 8
    for k, m in tta_transforms("flips"):
        np.testing.assert_array_equal(_inverse(_forward(x, k, m), k, m), x)


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_chunk_invariance_with_tta(mode):
    module = _conv_module(1)
    image = np.random.default_rng(2).uniform(0, 1, (70, 90)).astype(np.float32)
    outs = [chunkseg.predict(image, module, tile=32, overlap=8, chunks=c, tta=mode,
                             outputs="logits").logits.values for c in (24, 48, 200)]
    for other in outs[1:]:
        np.testing.assert_allclose(other, outs[0], rtol=1e-5, atol=1e-5)
    plain = chunkseg.predict(image, module, tile=32, overlap=8, outputs="logits").logits.values
    assert np.abs(outs[0] - plain).max() > 1e-3


def test_pointwise_model_unchanged():
    """A 1x1 model commutes with every symmetry: TTA gives its plain output."""
    model = numpy_two_class()
    image = np.random.default_rng(3).integers(0, 256, (40, 50)).astype(np.uint8)
    a = chunkseg.predict(image, model, tile=16, overlap=4, tta="d4", outputs="logits")
    b = chunkseg.predict(image, model, tile=16, overlap=4, outputs="logits")
    np.testing.assert_allclose(a.logits.values, b.logits.values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tta, tile, exc, match", [
    ("d8", 32, ValueError, "`tta` must be one of"),
    (4, 32, TypeError, "`tta` must be one of"),
    ("d4", (32, 48), ValueError, "square tiles"),
])
def test_bad_tta(tta, tile, exc, match):
    with pytest.raises(exc, match=match):
        chunkseg.predict(np.zeros((64, 64), np.float32), numpy_conv3x3(), tile=tile,
                         overlap=8, tta=tta)


def test_check_tta_none():
    assert check_tta(None, (8, 8)) is None and check_tta("none", (8, 16)) is None
    assert check_tta("flips", (8, 16)) == "flips"


def test_bad_model_output_is_a_model_error():
    with pytest.raises(chunkseg.ModelOutputError):
        TTAModel(lambda b: b[:, :, 0], "flips")(np.zeros((1, 1, 8, 8), np.float32))


def test_cli_tta_recorded_and_resume_checks_it(tmp_path, capsys):
    image = np.random.default_rng(4).integers(0, 256, (64, 64)).astype(np.uint8)
    import zarr

    zarr.save_array(str(tmp_path / "in.zarr"), image)
    out = tmp_path / "out.zarr"
    args = [str(tmp_path / "in.zarr"), str(out), "--model", "model_factories:numpy_conv3x3",
            "--tile", "32", "--overlap", "8", "--no-progress"]
    assert main(["predict", *args, "--tta", "d4"]) == 0
    ds = chunkseg.open_output(str(out))
    assert ds.attrs["tta"] == "d4"
    ref = chunkseg.predict(image, numpy_conv3x3(), tile=32, overlap=8, tta="d4",
                           outputs="logits")
    np.testing.assert_allclose(ds.logits.values, ref.logits.values, rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    # --resume takes the recorded tta when --tta is not given; another one is refused
    assert main(["predict", *args, "--resume", "--tta", "flips"]) == 2
    assert "tta" in capsys.readouterr().err
    assert main(["predict", *args, "--resume"]) == 0
