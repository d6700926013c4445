"""Train the shipped ISBI 2012 U-Net (script and importable functions).

Run as::

    python -m chunkseg.train --data data/isbi2012/train --out chunkseg/data/isbi2012_unet.pt \\
        --epochs 150 --val-sections 20,21,22,23,24 --seed 0

Sections not listed in ``--val-sections`` are trained on; the listed ones are held out and only
used for the final evaluation (the network runs on each whole section, it is fully
convolutional). Training samples random ``crop x crop`` patches with the 8 flips/rotations and a
mild brightness/contrast jitter, and minimises cross-entropy + soft Dice with Adam and a cosine
learning-rate decay. One *epoch* is the number of iterations whose crops cover as many pixels as
the training sections hold (20 sections of 512 x 512, 256 x 256 crops, batch 4: 20 iterations).
At the end the weights (a float32 ``state_dict``) are written to ``--out`` and a JSON record of
the run and its held-out scores next to them (same name, ``.json``).

Labels on disk are 255 = cell interior, 0 = membrane; in memory they are class indices
0 = cell interior, 1 = membrane.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

from chunkseg.metrics import confusion_matrix
from chunkseg.unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD, UNet

from .errors import InvalidValueError, NotFoundError

__all__ = [
    "TrainResult",
    "evaluate",
    "iterations_per_epoch",
    "load_sections",
    "main",
    "measure_normalisation",
    "normalise",
    "predict",
    "sample_batch",
    "segmentation_loss",
    "soft_dice_loss",
    "train",
]

MEMBRANE = 1
DEFAULT_VAL_SECTIONS = (20, 21, 22, 23, 24)


# ----------------------------------------------------------------------------- data


def _read_png(path: Path) -> NDArray[np.uint8]:
    arr = np.asarray(Image.open(path))
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise InvalidValueError(
            f"`{path}` must be a 2-D uint8 grayscale image. Got shape {arr.shape}, dtype "
            f"{arr.dtype}."
        )
    return arr


def list_sections(root: str | Path) -> list[int]:
    """Section indices ``NN`` with an ``image/NN.png`` under ``root``, sorted.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder holding ``image/`` and ``label/``.

    Returns
    -------
    list of int
    """
    return sorted(int(p.stem) for p in (Path(root) / "image").glob("[0-9][0-9].png"))


def load_sections(
    root: str | Path, sections: Sequence[int] | None = None
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """Load ISBI 2012 sections and their labels as class indices.

    Parameters
    ----------
    root : str or pathlib.Path
        Folder holding ``image/NN.png`` and ``label/NN.png`` (uint8, labels 255 = cell
        interior, 0 = membrane).
    sections : sequence of int, optional
        Section indices ``NN`` to load; all sections found under ``root`` by default.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(S, H, W)``.
    labels : numpy.ndarray
        uint8 class indices, shape ``(S, H, W)``: 0 = cell interior, 1 = membrane (on-disk 0).

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no sections or a requested image or label file is missing.
    ValueError
        If a file is not a 2-D uint8 image or the sections differ in shape.
    """
    root = Path(root)
    indices = list(sections) if sections is not None else list_sections(root)
    if not indices:
        raise NotFoundError(f"`root` must hold sections image/NN.png. Got {str(root)!r}, where none were "
                            "found.")
    images, labels = [], []
    for i in indices:
        images.append(_read_png(root / "image" / f"{i:02d}.png"))
        labels.append((_read_png(root / "label" / f"{i:02d}.png") == 0).astype(np.uint8))
    if len({a.shape for a in images + labels}) != 1:
        raise InvalidValueError(f"the sections under `root` must share one shape. Got {str(root)!r}, whose "
                                 "sections differ.")
    return np.stack(images), np.stack(labels)


def normalise(images: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Apply the shipped model's input normalisation ``(x * ISBI_SCALE - ISBI_MEAN) / ISBI_STD``.

    Parameters
    ----------
    images : numpy.ndarray
        Raw uint8 (or any numeric) intensities, any shape.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    return ((np.asarray(images, dtype=np.float32) * ISBI_SCALE - ISBI_MEAN) / ISBI_STD).astype(
        np.float32
    )


def measure_normalisation(images: NDArray[np.uint8]) -> tuple[float, float]:
    """Mean and standard deviation of ``images * ISBI_SCALE`` over all pixels (float64).

    Parameters
    ----------
    images : numpy.ndarray
        Raw uint8 intensities, any shape.

    Returns
    -------
    (float, float)
        Mean and (population) standard deviation.
    """
    scaled = np.asarray(images, dtype=np.float64) * ISBI_SCALE
    return float(scaled.mean()), float(scaled.std())


def _augment(
    image: NDArray[np.float32], label: NDArray[np.uint8], rng: np.random.Generator, jitter: bool
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    k = int(rng.integers(4))
    image, label = np.rot90(image, k), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if jitter:
        contrast = rng.uniform(0.85, 1.15)
        brightness = rng.uniform(-0.05, 0.05) / ISBI_STD  # +-0.05 in [0, 1] intensity units
        image = image * np.float32(contrast) + np.float32(brightness)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def sample_batch(
    images: NDArray[np.float32],
    labels: NDArray[np.uint8],
    rng: np.random.Generator,
    batch_size: int,
    crop: int,
    jitter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw random augmented crops.

    Parameters
    ----------
    images : numpy.ndarray
        Normalised float32 sections, shape ``(S, H, W)``.
    labels : numpy.ndarray
        Class indices, shape ``(S, H, W)``.
    rng : numpy.random.Generator
        Source of the crop positions and augmentations.
    batch_size : int
        Number of crops.
    crop : int
        Crop side, at most ``min(H, W)``.
    jitter : bool, default True
        Apply a random contrast factor in [0.85, 1.15] and brightness shift of +-0.05 (in
        ``[0, 1]`` intensity units) besides the random rot90 and flip.

    Returns
    -------
    x : torch.Tensor
        float32, shape ``(batch_size, 1, crop, crop)``.
    y : torch.Tensor
        int64 class indices, shape ``(batch_size, crop, crop)``.

    Raises
    ------
    ValueError
        If ``crop`` exceeds the section size.
    """
    _, h, w = images.shape
    if crop > min(h, w):
        raise InvalidValueError(f"`crop` must be at most the section size {h} x {w}. Got {crop}.")
    xs, ys = [], []
    for _ in range(batch_size):
        s, r, c = (
            int(rng.integers(len(images))),
            int(rng.integers(h - crop + 1)),
            int(rng.integers(w - crop + 1)),
        )
        x, y = _augment(
            images[s, r : r + crop, c : c + crop],
            labels[s, r : r + crop, c : c + crop],
            rng,
            jitter,
        )
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64))


# ----------------------------------------------------------------------------- losses


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss, ``1 - mean over classes of 2 sum(p t) / (sum p + sum t)``.

    Probabilities are the softmax of ``logits`` over the class dimension; sums run over the
    batch and all pixels, so each class counts equally whatever its frequency (Milletari et al.
    2016, V-Net).

    Parameters
    ----------
    logits : torch.Tensor
        float, shape ``(N, C, H, W)``.
    target : torch.Tensor
        int64 class indices in ``[0, C)``, shape ``(N, H, W)``.
    eps : float, default 1.0
        Smoothing added to numerator and denominator.

    Returns
    -------
    torch.Tensor
        Scalar in [0, 1] (0 for a perfect, confident prediction).

    Raises
    ------
    ValueError
        If the shapes do not match.
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise InvalidValueError(
            "`logits` must be (N, C, H, W) and `target` (N, H, W). Got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}."
        )
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * one_hot).sum(dims)
    denom = probs.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Training loss: pixel-averaged cross-entropy + :func:`soft_dice_loss`.

    Parameters
    ----------
    logits : torch.Tensor
        float, shape ``(N, C, H, W)``.
    target : torch.Tensor
        int64 class indices, shape ``(N, H, W)``.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    return F.cross_entropy(logits, target) + soft_dice_loss(logits, target)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : UNet
        The trained model, left in train mode.
    losses : list of float
        Training loss of every iteration, in order.
    iterations : int
        Number of optimiser steps taken.
    wall_time_s : float
        Wall-clock seconds of the training loop.
    """

    model: UNet
    losses: list[float] = field(default_factory=list)
    iterations: int = 0
    wall_time_s: float = 0.0


def iterations_per_epoch(
    n_sections: int, height: int, width: int, crop: int, batch_size: int
) -> int:
    """Iterations whose crops cover as many pixels as ``n_sections`` sections hold (ceil).

    Parameters
    ----------
    n_sections, height, width : int
        Training set size.
    crop, batch_size : int
        Crop side and crops per iteration.

    Returns
    -------
    int
    """
    return max(1, math.ceil(n_sections * height * width / (crop * crop * batch_size)))


def train(
    images: NDArray[np.uint8],
    labels: NDArray[np.uint8],
    *,
    iterations: int,
    batch_size: int = 4,
    crop: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    model: UNet | None = None,
    jitter: bool = True,
    channels_last: bool = True,
    log_every: int = 0,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a U-Net on random augmented crops with Adam and cross-entropy + soft Dice.

    Seeds ``torch.manual_seed(seed)`` (model initialisation) and a numpy generator (crops and
    augmentation) so a run is reproducible on the same machine and torch version. The learning
    rate decays from ``lr`` to ``lr / 100`` on a cosine schedule.

    Parameters
    ----------
    images : numpy.ndarray
        Raw uint8 sections, shape ``(S, H, W)``; normalised here with :func:`normalise`.
    labels : numpy.ndarray
        Class indices (0 = cell interior, 1 = membrane), shape ``(S, H, W)``.
    iterations : int
        Optimiser steps.
    batch_size : int, default 4
        Crops per step.
    crop : int, default 256
        Crop side; must be divisible by ``2**model.depth``.
    lr : float, default 1e-3
        Initial Adam learning rate.
    seed : int, default 0
        Seed of torch and of the numpy generator.
    model : UNet, optional
        Model to train in place; ``UNet()`` (built after seeding) by default.
    jitter : bool, default True
        Brightness/contrast jitter, see :func:`sample_batch`.
    channels_last : bool, default True
        Use the channels-last memory format (faster convolutions on CPU).
    log_every : int, default 0
        Log the mean loss of the last ``log_every`` iterations every ``log_every`` iterations
        through ``log``; 0 disables.
    log : callable, default print
        Receives the log lines.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        If ``iterations`` < 1, shapes of ``images`` and ``labels`` differ, or ``crop`` is too
        large or not divisible by ``2**depth``.
    """
    if iterations < 1:
        raise InvalidValueError(f"`iterations` must be >= 1. Got {iterations}.")
    if images.shape != labels.shape or images.ndim != 3:
        raise InvalidValueError(
            "`images` and `labels` must both be (S, H, W). Got "
            f"{images.shape} and {labels.shape}."
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = UNet() if model is None else model
    if crop % model.multiple:
        raise InvalidValueError(f"`crop` must be divisible by 2**depth = {model.multiple}. Got {crop}.")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, iterations, eta_min=lr / 100)
    data = normalise(images)
    result = TrainResult(model=model)
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        x, y = sample_batch(data, labels, rng, batch_size, crop, jitter)
        loss = segmentation_loss(model(x.contiguous(memory_format=memory_format)), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        result.losses.append(float(loss.detach()))
        if log_every and it % log_every == 0:
            elapsed = time.perf_counter() - start
            mean = float(np.mean(result.losses[-log_every:]))
            log(
                f"iter {it}/{iterations} loss {mean:.4f} lr {schedule.get_last_lr()[0]:.2e} {elapsed:.0f}s"
            )
    result.iterations = iterations
    result.wall_time_s = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format)
    return result


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(model: UNet, images: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Run ``model`` in eval mode on each whole section and take the argmax class.

    Parameters
    ----------
    model : UNet
        Model; its train/eval mode is restored afterwards.
    images : numpy.ndarray
        Raw uint8 sections, shape ``(S, H, W)``, ``H`` and ``W`` divisible by ``2**depth``.

    Returns
    -------
    numpy.ndarray
        uint8 class indices, shape ``(S, H, W)``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [
            model(torch.from_numpy(normalise(img)[None, None]).to(device))
            .argmax(1)[0]
            .cpu()
            .numpy()
            for img in images
        ]
    finally:
        model.train(was_training)
    return np.stack(out).astype(np.uint8)


def evaluate(model: UNet, images: NDArray[np.uint8], labels: NDArray[np.uint8]) -> dict[str, float]:
    """Score ``model`` on whole sections, pooling all their pixels.

    Parameters
    ----------
    model : UNet
        A 2-class model (0 = cell interior, 1 = membrane).
    images : numpy.ndarray
        Raw uint8 sections, shape ``(S, H, W)``.
    labels : numpy.ndarray
        Class indices, shape ``(S, H, W)``.

    Returns
    -------
    dict of str to float
        ``pixel_error`` (fraction of misclassified pixels, see
        :func:`chunkseg.metrics.pixel_error`), ``membrane_iou``, ``membrane_dice``,
        ``cell_iou``, and ``trivial_pixel_error``: the pixel error of predicting cell interior
        everywhere (the membrane fraction). All in [0, 1].
    """
    pred = predict(model, images)
    cm = confusion_matrix(labels, pred, 2).astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    m = MEMBRANE
    return {
        "pixel_error": float(1.0 - tp.sum() / cm.sum()),
        "membrane_iou": float(tp[m] / (tp[m] + fp[m] + fn[m])),
        "membrane_dice": float(2 * tp[m] / (2 * tp[m] + fp[m] + fn[m])),
        "cell_iou": float(tp[0] / (tp[0] + fp[0] + fn[0])),
        "trivial_pixel_error": float(np.mean(labels == m)),
    }


# ----------------------------------------------------------------------------- script


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chunkseg.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/isbi2012/train"),
        help="folder with image/ and label/",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("chunkseg/data/isbi2012_unet.pt"),
        help="weights file to write",
    )
    p.add_argument("--epochs", type=int, default=150, help="epochs (see module docstring)")
    p.add_argument(
        "--iterations", type=int, default=None, help="optimiser steps; overrides --epochs"
    )
    p.add_argument(
        "--val-sections", default="20,21,22,23,24", help="comma-separated held-out section indices"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def _run_record(
    args: argparse.Namespace, argv: Sequence[str], result: TrainResult, **extra: object
) -> dict:
    tail = result.losses[-min(100, len(result.losses)) :]
    return {
        "command": "python -m chunkseg.train " + shlex.join(argv),
        "epochs": args.epochs if args.iterations is None else None,
        "iterations": result.iterations,
        "batch_size": args.batch_size,
        "crop": args.crop,
        "lr": args.lr,
        "optimizer": "Adam, cosine decay to lr/100",
        "loss": "cross-entropy + soft Dice",
        "loss_first": result.losses[0],
        "loss_final_mean_last_100": float(np.mean(tail)),
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "train_wall_time_s": round(result.wall_time_s, 1),
        **extra,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, save weights and a JSON record, evaluate the held-out sections, print and return scores.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (``sys.argv[1:]`` by default); ``--help`` lists them.

    Returns
    -------
    dict of str to float
        The held-out scores of :func:`evaluate`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    val = sorted(int(s) for s in args.val_sections.split(",") if s.strip())
    train_ids = [i for i in list_sections(args.data) if i not in val]
    images, labels = load_sections(args.data, train_ids)
    val_images, val_labels = load_sections(args.data, val)
    per_epoch = iterations_per_epoch(len(images), *images.shape[1:], args.crop, args.batch_size)
    iterations = args.iterations if args.iterations is not None else args.epochs * per_epoch
    print(
        f"train sections {train_ids}, held out {val}; {iterations} iterations ({per_epoch}/epoch)",
        flush=True,
    )
    result = train(
        images, labels, iterations=iterations, batch_size=args.batch_size, crop=args.crop,
        lr=args.lr, seed=args.seed, log_every=args.log_every, log=lambda s: print(s, flush=True),
    )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, args.out
    )
    scores = evaluate(result.model, val_images, val_labels)
    mean, std = measure_normalisation(images)
    record = _run_record(
        args, argv, result,
        iterations_per_epoch=per_epoch, train_sections=train_ids, val_sections=val,
        parameters=sum(p.numel() for p in result.model.parameters()),
        weights_bytes=args.out.stat().st_size,
        normalisation={"scale": ISBI_SCALE, "mean": ISBI_MEAN, "std": ISBI_STD,
                       "measured_train_mean": mean, "measured_train_std": std},
        held_out=scores,
    )  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        json.dumps({"train_wall_time_s": record["train_wall_time_s"], "held_out": scores}, indent=2)
    )
    return scores


if __name__ == "__main__":
    main()
