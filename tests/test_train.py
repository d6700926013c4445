from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from chunkseg.train import (  # noqa: E402
    TrainResult,
    evaluate,
    iterations_per_epoch,
    load_sections,
    main,
    sample_batch,
    soft_dice_loss,
    train,
)
from chunkseg.unet import UNet  # noqa: E402


def _synthetic(n: int = 2, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark 'membrane' lines on a bright noisy background; label 1 where dark."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size), dtype=np.uint8)
    for s in range(n):
        for r in rng.integers(0, size - 2, size=3):
            labels[s, r : r + 2, :] = 1
        for c in rng.integers(0, size - 2, size=3):
            labels[s, :, c : c + 2] = 1
    images = np.where(labels == 1, 60, 180) + rng.normal(0, 15, labels.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def _write_dataset(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
    for i, (img, lbl) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img).save(root / "image" / f"{i:02d}.png")
        Image.fromarray(np.where(lbl == 1, 0, 255).astype(np.uint8)).save(
            root / "label" / f"{i:02d}.png"
        )


def test_load_sections_maps_membrane_to_class_1(tmp_path: Path) -> None:
    images, labels = _synthetic(3, 16)
    _write_dataset(tmp_path, images, labels)
    got_images, got_labels = load_sections(tmp_path, [0, 2])
    assert got_images.dtype == np.uint8 and got_images.shape == (2, 16, 16)
    np.testing.assert_array_equal(got_images, images[[0, 2]])
    np.testing.assert_array_equal(got_labels, labels[[0, 2]])
    assert load_sections(tmp_path)[0].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError):
        load_sections(tmp_path / "missing")


def test_sample_batch_shapes_and_errors() -> None:
    images, labels = _synthetic(2, 64)
    rng = np.random.default_rng(0)
    x, y = sample_batch(images.astype(np.float32), labels, rng, batch_size=3, crop=32)
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (3, 32, 32) and y.dtype == torch.int64
    with pytest.raises(ValueError, match="`crop` must be at most.*Got 128"):
        sample_batch(images.astype(np.float32), labels, rng, batch_size=1, crop=128)


def test_soft_dice_loss() -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50.0
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    worst = float(soft_dice_loss(-perfect, target))
    assert 0.0 <= worst <= 1.0 and worst > 0.5
    with pytest.raises(ValueError, match="target"):
        soft_dice_loss(perfect, target[0])


def test_iterations_per_epoch() -> None:
    assert iterations_per_epoch(20, 512, 512, 256, 4) == 20
    assert iterations_per_epoch(1, 64, 64, 256, 4) == 1


def test_train_few_iterations_and_evaluate() -> None:
    images, labels = _synthetic(2, 64)
    kwargs = {
        "iterations": 12,
        "batch_size": 2,
        "crop": 32,
        "lr": 1e-2,
        "seed": 1,
        "channels_last": False,
    }

    def tiny() -> UNet:
        torch.manual_seed(1)
        return UNet(base_channels=4, depth=2)

    result = train(images, labels, model=tiny(), **kwargs)
    assert isinstance(result, TrainResult) and isinstance(result.model, UNet)
    assert result.iterations == 12 and len(result.losses) == 12
    assert all(math.isfinite(v) for v in result.losses)
    assert result.wall_time_s > 0
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])
    again = train(images, labels, model=tiny(), **kwargs)
    np.testing.assert_allclose(again.losses, result.losses, rtol=1e-5)  # seeded

    scores = evaluate(result.model, images, labels)
    assert set(scores) >= {"pixel_error", "membrane_iou", "membrane_dice", "trivial_pixel_error"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["trivial_pixel_error"] == pytest.approx(labels.mean())
    assert result.model.training  # evaluate restores the mode


def test_train_rejects_bad_arguments() -> None:
    images, labels = _synthetic(1, 32)
    with pytest.raises(ValueError, match="iterations"):
        train(images, labels, iterations=0)
    with pytest.raises(ValueError, match="divisible"):
        train(images, labels, iterations=1, crop=20, model=UNet(base_channels=4))


def test_main_writes_weights_and_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = _synthetic(3, 32)
    _write_dataset(tmp_path / "data", images, labels)
    out = tmp_path / "w" / "model.pt"
    argv = ["--data", str(tmp_path / "data"), "--out", str(out), "--iterations", "2",
            "--crop", "32", "--batch-size", "1", "--val-sections", "2", "--log-every", "1",
            "--threads", str(torch.get_num_threads())]  # fmt: skip
    scores = main(argv)
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["train_sections"] == [0, 1] and record["val_sections"] == [2]
    assert record["iterations"] == 2 and record["seed"] == 0
    assert record["held_out"] == scores
    assert record["command"].startswith("python -m chunkseg.train --data")
    state = torch.load(out, weights_only=True)
    UNet().load_state_dict(state)
    assert "iter 2/2" in capsys.readouterr().out
