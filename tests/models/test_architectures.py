"""Networks and losses by name (chunkseg.models.architectures, chunkseg.training.losses)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chunkseg.models.architectures import build_model, count_parameters, size_multiple  # noqa: E402
from chunkseg.training.losses import build_loss  # noqa: E402


def test_unet_by_name():
    net = build_model("unet", in_channels=1, classes=3, base_channels=4, depth=2).eval()
    assert size_multiple(net) == 4
    assert net(torch.zeros(2, 1, 16, 24)).shape == (2, 3, 16, 24)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name, multiple", [("deeplabv3plus", 16), ("segformer", 32)])
def test_smp_architectures_random_init(name, multiple):
    pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    a = build_model(name, in_channels=3, classes=2)
    torch.manual_seed(1)
    b = build_model(name, in_channels=3, classes=2)
    assert size_multiple(a) == multiple
    assert a.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    # random initialisation (no weights downloaded): two seeds give different weights
    wa, wb = (next(iter(m.encoder.parameters())).detach() for m in (a, b))
    assert not torch.equal(wa, wb)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"name": "resnet"}, ValueError, "`model.name` must be one of"),
    ({"name": "deeplabv3plus", "encoder_weights": "imagenet"}, ValueError, "must be None"),
])
def test_bad_architectures(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        build_model(**kwargs)


def _case(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, k, 8, 8, generator=g), torch.randint(0, k, (2, 8, 8), generator=g)


def test_weighted_sum_equals_its_terms():
    smp = pytest.importorskip("segmentation_models_pytorch")
    logits, target = _case()
    loss = build_loss([{"name": "ce", "weight": 2.0}, {"name": "dice", "weight": 0.5},
                       {"name": "focal", "weight": 0.25, "gamma": 2.0}])
    expected = (2.0 * torch.nn.functional.cross_entropy(logits, target)
                + 0.5 * smp.losses.DiceLoss("multiclass")(logits, target)
                + 0.25 * smp.losses.FocalLoss("multiclass", gamma=2.0)(logits, target))
    assert float(loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    assert set(loss.last) == {"ce", "dice", "focal"}
    assert float(build_loss("ce+dice")(logits, target)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, target)
              + smp.losses.DiceLoss("multiclass")(logits, target)), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "dice", "focal"])
def test_ignored_pixels_do_not_count_and_perfect_is_zero(name):
    pytest.importorskip("segmentation_models_pytorch")
    logits, target = _case(1)
    target[:, :2] = -100
    loss = build_loss(name)
    other = logits.clone()
    other[:, :, :2] = torch.randn_like(other[:, :, :2]) * 5  # only ignored pixels change
    assert float(loss(logits, target)) == pytest.approx(float(loss(other, target)), rel=1e-6)
    perfect = (torch.nn.functional.one_hot(target.clamp(min=0), 3).permute(0, 3, 1, 2) * 2 - 1) * 40.0
    assert float(loss(perfect, target)) < 1e-3


@pytest.mark.parametrize("terms, exc, match", [
    ("hinge", ValueError, "`loss` names"), ([], ValueError, "at least one"),
    ([{"name": "ce", "weight": -1}], ValueError, "weights must be"), (3, TypeError, "`loss` must be"),
])
def test_bad_losses(terms, exc, match):
    with pytest.raises(exc, match=match):
        build_loss(terms)


def test_loss_decreases_with_a_step():
    """One optimiser step on the weighted loss lowers it (the terms are differentiable)."""
    pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, classes=2, base_channels=4, depth=1)
    x = torch.randn(2, 1, 16, 16)
    y = (x[:, 0] > 0).long()
    loss = build_loss("ce+dice")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    before = float(loss(net(x), y))
    for _ in range(5):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    assert float(loss(net(x), y)) < before
    assert np.isfinite(before)
