"""The U-Net weight-map loss (Ronneberger et al. 2015, eq. 2) against a plain implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from chunkseg.errors import InvalidTypeError, InvalidValueError  # noqa: E402
from chunkseg.training.losses import build_loss, unet_weight_map  # noqa: E402

IGNORE = -100


def _reference(target: np.ndarray, *, object_class: int, classes: int, w0: float,
               sigma: float, balance: bool) -> np.ndarray:
    """Eq. 2 as written: one full EDT per cell, the distances sorted per pixel."""
    out = np.zeros(target.shape, np.float64)
    valid = target != IGNORE
    if balance:
        counts = np.array([(target == k).sum() for k in range(classes)], float)
        present = (counts > 0).sum()
        wc = np.array([valid.sum() / (present * c) if c else 0.0 for c in counts])
    else:
        wc = np.ones(classes)
    for n, patch in enumerate(target):
        cells, count = ndimage.label(patch == object_class)  # 4-connected
        out[n] = np.where(valid[n], wc[np.where(valid[n], patch, 0)], 0)
        if count >= 2:
            d = np.sort(np.stack([ndimage.distance_transform_edt(cells != i)
                                  for i in range(1, count + 1)]), axis=0)
            out[n] += w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.where(valid, out, 0)


def _patches(seed: int, n: int = 3, shape=(48, 56), classes: int = 2) -> np.ndarray:
    """Cells (class 0) between thin random membranes (class 1), some pixels ignored."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), (0, 2.5, 2.5))
    grad = np.hypot(*np.gradient(field, axis=(1, 2)))
    target = np.where(grad > np.quantile(grad, 0.75), 1, 0)
    if classes == 3:
        target[rng.random(target.shape) < 0.05] = 2
    target[rng.random(target.shape) < 0.03] = IGNORE
    return target.astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("sigma", [2.0, 5.0])
def test_weight_map_matches_full_edts(seed, balance, sigma):
    target = _patches(seed, classes=3 if seed == 2 else 2)
    classes = 3 if seed == 2 else 2
    assert min(ndimage.label(p == 0)[1] for p in target) >= 3  # several cells per patch
    got = unet_weight_map(target, object_class=0, classes=classes, w0=10, sigma=sigma,
                          balance=balance, ignore_index=IGNORE)
    want = _reference(target, object_class=0, classes=classes, w0=10, sigma=sigma,
                      balance=balance)
    assert got.dtype == np.float32 and got.shape == target.shape
    # exact but for the cut-off: boundary terms below w0 * 1e-6 are dropped
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=10 * 1e-6)
    assert np.all(got[target == IGNORE] == 0)
    assert got.max() > 5  # the boundary term is there


def test_two_cells_across_a_2px_membrane_by_hand():
    target = np.zeros((1, 10, 12), np.int64)  # cells: columns 0-4 and 7-11
    target[:, :, 5:7] = 1                      # membrane: columns 5 and 6
    w0, sigma = 10.0, 5.0

    def term(d1, d2):
        return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))

    plain = unet_weight_map(target, object_class=0, classes=2, balance=False)[0]
    # on the membrane d1 = 1, d2 = 2; at the cell's edge d1 = 0, d2 = 3; far side d2 = 7
    for col, (d1, d2) in {5: (1, 2), 6: (1, 2), 4: (0, 3), 7: (0, 3), 0: (0, 7)}.items():
        np.testing.assert_allclose(plain[:, col], 1 + term(d1, d2), rtol=1e-6)
    balanced = unet_weight_map(target, object_class=0, classes=2, balance=True)[0]
    # 100 cell and 20 membrane pixels: w_c = 120 / (2 * 100) and 120 / (2 * 20)
    np.testing.assert_allclose(balanced[:, 5], 3.0 + term(1, 2), rtol=1e-6)
    np.testing.assert_allclose(balanced[:, 0], 0.6 + term(0, 7), rtol=1e-6)


def test_one_cell_or_none_has_no_boundary_term():
    target = np.ones((2, 16, 16), np.int64)
    target[0, 4:9, 4:9] = 0  # one cell; the second patch has none
    target[1, 0, 0] = IGNORE
    got = unet_weight_map(target, object_class=0, classes=2, balance=False)
    assert got[0].tolist() == np.ones((16, 16)).tolist()
    assert got[1, 0, 0] == 0 and np.all(got[1].ravel()[1:] == 1)


def test_loss_is_the_weighted_cross_entropy():
    target = torch.from_numpy(_patches(3, n=2, shape=(32, 32)))
    logits = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = build_loss([{"name": "unet_weighted", "w0": 10, "sigma": 3}], ignore_index=IGNORE,
                      object_class=0)
    w = torch.from_numpy(_reference(target.numpy(), object_class=0, classes=2, w0=10, sigma=3,
                                    balance=True)).float()
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    want = float((w * ce).sum() / (target != IGNORE).sum())
    assert float(loss(logits, target)) == pytest.approx(want, rel=1e-5)
    assert set(loss.last) == {"unet_weighted"}
    # with no boundary term and no balancing it is plain cross-entropy
    flat = build_loss([{"name": "unet_weighted", "w0": 0, "balance": False}],
                      ignore_index=IGNORE, object_class=0)
    assert float(flat(logits, target)) == pytest.approx(
        float(build_loss("ce", ignore_index=IGNORE)(logits, target)), rel=1e-6)


def test_loss_gradient_flows():
    target = torch.from_numpy(_patches(4, n=1, shape=(24, 24)))
    logits = torch.zeros(1, 2, 24, 24, requires_grad=True)
    build_loss("unet_weighted", object_class=0)(logits, target).backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


@pytest.mark.parametrize("term, exc, match", [
    ({"name": "unet_weighted", "sigma": 0}, InvalidValueError, "sigma must be a number > 0"),
    ({"name": "unet_weighted", "w0": -1}, InvalidValueError, "w0 must be a number >= 0"),
    ({"name": "unet_weighted", "gamma": 2}, InvalidValueError, "Got \\['gamma'\\]"),
    ({"name": "unet_weighted", "balance": "yes"}, InvalidTypeError, "balance must be true"),
    ({"name": "unet_weighted", "object_class": -1}, InvalidValueError, "class index >= 0"),
])
def test_bad_options(term, exc, match):
    with pytest.raises(exc, match=match):
        build_loss([term], object_class=0)


def test_object_class_needed():
    with pytest.raises(InvalidValueError, match="set `object_class`"):
        build_loss("unet_weighted")
    assert build_loss([{"name": "unet_weighted", "object_class": 1}]).terms[0][2].object_class == 1
