"""Train a segmentation network on patches of big images: ``chunkseg train CONFIG``.

A run is described by a :class:`TrainConfig` (a TOML or JSON file): (image, labels) pairs for
training and validation, the patch sampling and augmentation (:class:`chunkseg.training.patches.
PatchDataset`), the architecture (:func:`chunkseg.models.architectures.build_model`), the loss
(:func:`chunkseg.training.losses.build_loss`), the optimiser and learning-rate schedule, and early
stopping on a validation metric. Validation runs the network through :func:`chunkseg.predict`
on each whole validation image (the tiled engine, as at inference) and scores it with
:func:`chunkseg.evaluation.evaluate`.

The output folder holds, as each epoch ends: ``checkpoint.pt`` (everything a resume needs),
``best.pt`` (the best weights so far), ``metrics.csv`` and ``metrics.json`` (one row per epoch),
and at the end ``loss_curve.png``, ``model.pt`` (a state_dict of the best epoch), ``model.ts``
(TorchScript) and ``model.onnx``, both with the input normalisation built in, so
``chunkseg predict IMAGE OUT --model run/model.ts`` needs no other setting, and ``train.json``
(the config, the best epoch and its scores, the environment). The same folder written by a
later ``--resume`` run continues the interrupted training where its last checkpoint left it.
"""

from __future__ import annotations

import copy
import csv
import glob
import json
import math
import os
import platform
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, NotFoundError, OutputExistsError
from ..outputs._lease import acquire
from ..outputs._lifecycle import staging_path, swap_folder
from ..outputs._target import check_output_folder, folder_is_replaceable

__all__ = ["TrainConfig", "TrainResult", "export_model", "train"]

MARKER_FILE = "train.json"
"""The file that marks a folder as a chunkseg training run (what ``overwrite`` may replace)."""
RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.csv", "metrics.json", "loss_curve.png",
             "model.pt", "model.ts", "model.onnx", MARKER_FILE)
MONITORS = {"pixel_error": "min", "accuracy": "max", "mean_iou": "max", "mean_dice": "max",
            "loss": "min"}


@dataclass(frozen=True)
class TrainConfig:
    """A training run, as plain data (``to_dict``/``from_dict``; a TOML or JSON file).

    Paths in a config file are relative to the file's folder.

    Attributes
    ----------
    train : tuple of (str, str)
        ``(image, labels)`` pairs, anything :func:`chunkseg.io.open_image` opens. In a file,
        ``[[train]]`` tables with ``image`` and ``labels``; glob patterns expand to sorted pairs.
    classes : tuple of str
        Class names, ``K`` of them; labels are class indices ``0..K-1`` (after ``label_map``).
    val : tuple of (str, str), default ()
        Validation pairs (same form). Without them there is no early stopping; the last epoch
        is the result.
    out : str, default "chunkseg-train"
        Output folder.
    tile : int, default 256
        Training patch side, pixels (a multiple of the network's down-sampling).
    stride : int, optional
        ``sampling="grid"``: distance between patches (default ``tile``: non-overlapping).
    sampling : {"random", "grid", "balanced"}, default "random"
        See :class:`chunkseg.training.patches.PatchDataset`.
    samples : int, optional
        Patches per epoch for random/balanced sampling. Default: as many patch pixels as the
        training images hold.
    label_map : dict, optional
        Stored label value -> class index (e.g. ISBI's ``{255: 0, 0: 1}``); other values are
        ignored by the loss and the metrics.
    augment : {"flips", "em", "rgb", "none"}, default "flips"
        :func:`chunkseg.training.patches.augmentation`'s kind; ``elastic`` adds its elastic deformation.
    elastic : bool, default False
    normalization : dict or "measure", default "measure"
        ``{scale, mean, std}`` (:class:`chunkseg.models.Normalization`), or measured on the
        training images (mean and standard deviation per channel of ``pixel * scale``, scale
        ``1/255`` for uint8, ``1/65535`` for uint16, else 1).
    model : {"unet", "deeplabv3plus", "segformer"}, default "unet"
    model_options : dict, default {}
        Passed to :func:`chunkseg.models.architectures.build_model`.
    loss : str or list of dict, default "ce+dice"
        :func:`chunkseg.training.losses.build_loss`'s ``terms``.
    optimizer : {"adam", "adamw", "sgd"}, default "adam"
    lr : float, default 1e-3
    weight_decay : float, default 0
    schedule : {"cosine", "constant"}, default "cosine"
        Cosine decay from ``lr`` to ``lr * min_lr_ratio`` over all iterations.
    min_lr_ratio : float, default 0.01
    epochs : int, default 50
    batch_size : int, default 4
    val_every : int, default 1
        Validate every this many epochs (and after the last).
    monitor : str, default "pixel_error"
        Validation metric that picks the best epoch: ``pixel_error``, ``accuracy``,
        ``mean_iou``, ``mean_dice``, or ``iou_<class>``/``dice_<class>``.
    patience : int, optional
        Stop after this many validations without improvement of ``monitor``.
    val_tile, val_overlap : int, optional
        Validation tiling (default ``tile`` and ``tile // 4``).
    val_window : str, default "gaussian"
    val_tta : {None, "flips", "d4"}, default None
    ema : float, optional
        Keep an exponential moving average of the weights (and batch-norm statistics) with
        this decay per iteration (e.g. 0.999: about the last 1000 iterations), with
        :class:`torch.optim.swa_utils.AveragedModel`; validation, ``best.pt`` and the exports
        use the averaged network. Default: no average, the trained weights themselves.
    seed : int, default 0
    device : str, default "cpu"
        Torch device of the training and of the validation's ``chunkseg.predict``
        (``"cuda"``, ``"cuda:1"``, ``"mps"``). The saved weights (``model.pt``, ``best.pt``) and
        the exports are CPU tensors either way, so a model trained on a GPU loads and runs on
        the CPU.
    threads : int, optional
        ``torch.set_num_threads`` (default: torch's).
    workers : int, default 0
        ``DataLoader`` worker processes.
    export : tuple of str, default ("torchscript", "onnx")
    """

    train: tuple[tuple[str, str], ...]
    classes: tuple[str, ...]
    val: tuple[tuple[str, str], ...] = ()
    out: str = "chunkseg-train"
    tile: int = 256
    stride: int | None = None
    sampling: str = "random"
    samples: int | None = None
    label_map: dict | None = None
    augment: str = "flips"
    elastic: bool = False
    normalization: Any = "measure"
    model: str = "unet"
    model_options: dict = field(default_factory=dict)
    loss: Any = "ce+dice"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.01
    epochs: int = 50
    batch_size: int = 4
    val_every: int = 1
    monitor: str = "pixel_error"
    patience: int | None = None
    val_tile: int | None = None
    val_overlap: int | None = None
    val_window: str = "gaussian"
    val_tta: str | None = None
    ema: float | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    workers: int = 0
    export: tuple[str, ...] = ("torchscript", "onnx")

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict:
        """Plain JSON-able data; ``TrainConfig.from_dict(c.to_dict()) == c``."""
        d = asdict(self)
        d["train"] = [{"image": i, "labels": la} for i, la in self.train]
        d["val"] = [{"image": i, "labels": la} for i, la in self.val]
        d["classes"] = list(self.classes)
        d["export"] = list(self.export)
        if self.label_map is not None:
            d["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root: str | os.PathLike | None = None
                  ) -> TrainConfig:
        """Build from plain data (a parsed TOML/JSON file).

        Parameters
        ----------
        data : mapping
            The attributes, ``train``/``val`` as lists of ``{image, labels}`` tables (glob
            patterns allowed) or of pairs.
        root : path, optional
            Folder that relative local paths are relative to (the config file's).

        Raises
        ------
        TypeError, ValueError
            For unknown keys or bad values; NotFoundError for a glob matching nothing.
        """
        if not isinstance(data, Mapping):
            raise InvalidTypeError(f"a training config must be a table of settings. Got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValueError(
                f"the training config has unknown keys {unknown}. Known keys: {sorted(known)}.")
        d = dict(data)
        for key in ("train", "val"):
            if key in d:
                d[key] = _pairs(d[key], key, root)
        if "out" in d and root is not None:
            d["out"] = _resolve(d["out"], root)
        for key in ("classes", "export"):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        if d.get("label_map") is not None:
            d["label_map"] = _label_map(d["label_map"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
        """Read a ``.toml`` or ``.json`` config, optionally changing some of its settings.

        Parameters
        ----------
        path : path
            The config file; relative paths in it are relative to its folder.
        overrides : sequence of str, default ()
            ``"KEY=VALUE"`` settings that replace the file's (``chunkseg train --set``). VALUE
            is a TOML value (``ema=0.999``, ``export=["onnx"]``,
            ``model_options={base_channels=20, depth=4}``); one that is not valid TOML is a
            string (``out=runs/wide``). A dotted KEY changes one entry of a table
            (``model_options.base_channels=20`` keeps ``depth``). Relative paths in
            overrides (``out``, ``train``, ``val``) are relative to the current directory.

        Raises
        ------
        FileNotFoundError
            If ``path`` is not a file.
        TypeError, ValueError
            For a file that does not parse, an override without ``=``, or a bad setting.
        """
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"`config` must be a TOML or JSON file. Got {str(path)!r}, which does not exist.")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as err:
            raise InvalidValueError(f"`config` {str(path)!r} could not be parsed: {err}.") from None
        if isinstance(data, dict):
            _merge(data, _overrides(overrides))
        return cls.from_dict(data, root=path.parent)


def _overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "out=runs/x"]`` -> ``{"a": {"b": 1}, "out": "/cwd/runs/x"}``."""
    if isinstance(overrides, str) or not isinstance(overrides, Sequence):
        raise InvalidTypeError(
            f"`overrides` must be a list of KEY=VALUE strings. Got {type(overrides).__name__}.")
    data: dict = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidValueError(
                f"a config override must be KEY=VALUE (e.g. ema=0.999). Got {item!r}.")
        try:
            parsed = tomllib.loads(f"{key} = {value.strip()}")
        except tomllib.TOMLDecodeError:
            try:
                parsed = tomllib.loads(f"{key} = {json.dumps(value.strip())}")
            except tomllib.TOMLDecodeError:
                raise InvalidValueError(
                    f"a config override's KEY must be a setting name such as ema or "
                    f"model_options.depth. Got {key!r}.") from None
        for name in ("out", "train", "val"):
            if name in parsed:
                parsed[name] = _from_cwd(parsed[name], name)
        _merge(data, parsed)
    return data


def _merge(base: dict, changes: Mapping) -> None:
    """Deep-merge ``changes`` into ``base``: tables merge, anything else replaces."""
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _from_cwd(value, key: str):
    """An override's relative local paths made absolute from the current directory (so the
    config's folder is not their root): ``out`` itself, or each pair of ``train``/``val``."""
    def cwd(path):
        return _resolve(path, Path.cwd()) if isinstance(path, str) else path

    if key == "out":
        return cwd(value)
    return [{"image": cwd(image), "labels": cwd(labels)} for image, labels in _pair_items(value, key)]


def _resolve(location: str, root) -> str:
    if "://" in str(location) or Path(location).is_absolute():
        return str(location)
    return str(Path(root) / location)


def _pair_items(value, key: str) -> list[tuple[Any, Any]]:
    """The ``(image, labels)`` of each entry of ``train``/``val``: tables or pairs."""
    if not isinstance(value, (list, tuple)):
        raise InvalidTypeError(f"`{key}` must be a list of {{image, labels}} tables. Got {value!r}.")
    items = []
    for item in value:
        if isinstance(item, Mapping) and set(item) == {"image", "labels"}:
            items.append((item["image"], item["labels"]))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            items.append(tuple(item))
        else:
            raise InvalidValueError(
                f"`{key}` entries must be {{image = ..., labels = ...}} tables. Got {item!r}.")
    return items


def _pairs(value, key: str, root) -> tuple[tuple[str, str], ...]:
    pairs = []
    for image, labels in _pair_items(value, key):
        if root is not None:
            image, labels = _resolve(image, root), _resolve(labels, root)
        if glob.has_magic(image) or glob.has_magic(labels):
            images, labelss = sorted(glob.glob(image)), sorted(glob.glob(labels))
            if not images or len(images) != len(labelss):
                raise NotFoundError(
                    f"`{key}` patterns must match the same number (>= 1) of images and labels. "
                    f"Got {len(images)} for {image!r} and {len(labelss)} for {labels!r}.")
            pairs += list(zip(images, labelss))
        else:
            pairs.append((str(image), str(labels)))
    return tuple(pairs)


def _label_map(value) -> dict:
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"`label_map` must be a table of stored value = class index. Got {value!r}.")
    try:
        return {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"`label_map` keys and values must be integers. Got {dict(value)!r}.") from None


def _positive(cfg, name: str, allow_none: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValueError(f"`{name}` must be a positive int. Got {value!r}.")


def _validate(cfg: TrainConfig) -> None:
    if not cfg.train:
        raise InvalidValueError("`train` must list at least one {image, labels} pair. Got none.")
    if not cfg.classes or not all(isinstance(c, str) and c for c in cfg.classes):
        raise InvalidValueError(
            f"`classes` must name every class (at least one). Got {cfg.classes!r}; e.g. "
            "classes = [\"background\", \"foreground\"].")
    for name in ("tile", "epochs", "batch_size", "val_every"):
        _positive(cfg, name)
    for name in ("stride", "samples", "patience", "val_tile", "threads"):
        _positive(cfg, name, allow_none=True)
    choices = {"sampling": ("random", "grid", "balanced"), "augment": ("flips", "em", "rgb", "none"),
               "optimizer": ("adam", "adamw", "sgd"), "schedule": ("cosine", "constant")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise InvalidValueError(f"`{name}` must be one of {allowed}. Got {getattr(cfg, name)!r}.")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        raise InvalidValueError(f"`lr` must be a positive number. Got {cfg.lr!r}.")
    if not (isinstance(cfg.normalization, Mapping) or cfg.normalization == "measure"):
        raise InvalidValueError(
            f"`normalization` must be 'measure' or a {{scale, mean, std}} table. Got "
            f"{cfg.normalization!r}.")
    metric = cfg.monitor
    per_class = metric.split("_", 1)[1] if metric.startswith(("iou_", "dice_")) else None
    if metric not in MONITORS and per_class not in cfg.classes:
        raise InvalidValueError(
            f"`monitor` must be one of {sorted(MONITORS)} or iou_<class>/dice_<class> with a "
            f"class of {list(cfg.classes)}. Got {metric!r}.")
    if cfg.ema is not None and (isinstance(cfg.ema, bool) or not isinstance(cfg.ema, (int, float))):
        raise InvalidTypeError(
            f"`ema` must be a decay in (0, 1) as a number, e.g. 0.999, or left out for no "
            f"average. Got {type(cfg.ema).__name__} {cfg.ema!r}.")
    if cfg.ema is not None and not 0 < cfg.ema < 1:
        raise InvalidValueError(
            f"`ema` must be a decay in (0, 1), e.g. 0.999, or left out for no average. Got "
            f"{cfg.ema!r}.")
    if not isinstance(cfg.device, str):
        raise InvalidTypeError(
            f"`device` must be a torch device name such as 'cpu' or 'cuda'. Got "
            f"{type(cfg.device).__name__} {cfg.device!r}.")
    bad = set(cfg.export) - {"torchscript", "onnx"}
    if bad:
        raise InvalidValueError(f"`export` must hold 'torchscript' and/or 'onnx'. Got {sorted(bad)}.")
    if cfg.label_map is not None and any(not 0 <= v < len(cfg.classes) for v in cfg.label_map.values()):
        raise InvalidValueError(
            f"`label_map` values must be class indices in [0, {len(cfg.classes)}). Got "
            f"{cfg.label_map!r}.")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The network with the best epoch's weights (the last epoch's without validation), in
        eval mode, on the CPU.
    history : list of dict
        One row per epoch (as ``metrics.csv``).
    best : dict
        The best validation row (empty without validation).
    out : pathlib.Path
        The output folder.
    files : dict of str -> pathlib.Path
        The exported files by kind.
    """

    model: Any
    history: list
    best: dict
    out: Path
    files: dict


# ----------------------------------------------------------------------------- parts


def _normalization(cfg: TrainConfig, arrays: Sequence[Any]):
    """The :class:`~chunkseg.models.Normalization` of a run: given, or measured out of core
    on the training images' ``(H, W, C)`` dask arrays ``arrays``."""
    import dask

    from ..models.load import Normalization

    if isinstance(cfg.normalization, Mapping):
        return Normalization(**cfg.normalization)
    kind = arrays[0].dtype
    scale = 1 / 255 if kind == np.uint8 else 1 / 65535 if kind == np.uint16 else 1.0
    sums = [((a.astype(np.float64) * scale).sum(axis=(0, 1)),
             ((a.astype(np.float64) * scale) ** 2).sum(axis=(0, 1))) for a in arrays]
    (parts,) = dask.compute(sums)  # chunk by chunk: no image is held whole
    n = sum(a.shape[0] * a.shape[1] for a in arrays)
    total = sum(p[0] for p in parts)
    squares = sum(p[1] for p in parts)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 1e-12))
    return Normalization(scale=scale, mean=tuple(float(m) for m in mean),
                         std=tuple(float(s) for s in std))


def _dataset(cfg: TrainConfig, normalization, pixels: int):
    """The training patches; ``pixels``: how many the training images hold (``H * W`` summed),
    for the default ``samples``."""
    from .patches import PatchDataset, augmentation

    transform = None
    if cfg.augment != "none":
        transform = augmentation(cfg.augment, elastic=cfg.elastic)
    samples = cfg.samples
    if samples is None and cfg.sampling != "grid":
        samples = max(1, round(pixels / cfg.tile**2))
    return PatchDataset(list(cfg.train), tile=cfg.tile, stride=cfg.stride, sampling=cfg.sampling,
                        samples=samples, transform=transform, label_map=cfg.label_map,
                        normalization=normalization, seed=cfg.seed)


def _optimizer(cfg: TrainConfig, model):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(cfg: TrainConfig, optimizer, iterations: int):
    import torch

    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, iterations),
                                                      eta_min=cfg.lr * cfg.min_lr_ratio)


def _averaged(cfg: TrainConfig, model):
    """The moving average of the weights (torch's AveragedModel), or None without ``ema``."""
    if cfg.ema is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def _evaluate_pairs(cfg: TrainConfig, model, normalization) -> dict:
    """Run the network through chunkseg.predict on every validation pair; pooled scores."""
    from .. import engine
    from ..evaluation.metrics import scores_from_confusion
    from ..evaluation.semantic import confusion_matrix_dask
    from ..io import open_image

    tile = cfg.val_tile or cfg.tile
    overlap = cfg.val_overlap if cfg.val_overlap is not None else tile // 4
    total = None
    for image, labels in cfg.val:
        ds = engine.predict(image, model, tile=tile, overlap=overlap, window=cfg.val_window,
                            normalization=normalization, outputs="labels", tta=cfg.val_tta,
                            device=cfg.device)
        truth = open_image(labels).data[..., 0]
        cm = confusion_matrix_dask(ds.labels.data, truth, classes=len(cfg.classes),
                                   label_map=cfg.label_map).compute()
        total = cm if total is None else total + cm
    scores = scores_from_confusion(total)
    row = {"pixel_error": scores["pixel_error"], "accuracy": scores["accuracy"],
           "mean_iou": scores["mean_iou"], "mean_dice": scores["mean_dice"]}
    for k, name in enumerate(cfg.classes):
        row[f"iou_{name}"] = float(scores["iou"][k])
        row[f"dice_{name}"] = float(scores["dice"][k])
    return row


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if mode == "min" else value > best


class _Normalized:
    """Builds the module that is exported: the input normalisation, then the network."""

    @staticmethod
    def build(net, normalization):
        import torch

        class Normalized(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net
                c = len(normalization.mean)
                self.register_buffer("mean", torch.tensor(normalization.mean).view(1, c, 1, 1))
                self.register_buffer("std", torch.tensor(normalization.std).view(1, c, 1, 1))
                self.scale = float(normalization.scale)

            def forward(self, x):
                return self.net((x * self.scale - self.mean) / self.std)

        return Normalized().eval()


def export_model(model, normalization, out: str | os.PathLike, *, in_channels: int,
                 tile: int, kinds: Sequence[str] = ("torchscript", "onnx")) -> dict:
    """Export a trained network with its input normalisation built in.

    Parameters
    ----------
    model : torch.nn.Module
        ``(N, C_in, H, W)`` -> logits; put in eval mode (a copy is exported, on the CPU).
    normalization : chunkseg.models.Normalization
        Applied inside the exported module, so it takes raw pixel values (uint8 0..255 as
        float): ``(x * scale - mean) / std``.
    out : path
        Folder; writes ``model.ts`` (``torch.jit.trace``) and/or ``model.onnx``
        (``torch.onnx.export``, opset 17, dynamic batch, height and width).
    in_channels, tile : int
        The example input of the trace, ``(1, in_channels, tile, tile)``.
    kinds : sequence of {"torchscript", "onnx"}

    Returns
    -------
    dict of str -> pathlib.Path
        ``{"torchscript": .../model.ts, "onnx": .../model.onnx}`` for the kinds written.

    Notes
    -----
    Both load with :func:`chunkseg.as_model` / ``chunkseg predict --model``. The ONNX file
    needs the ``onnx`` package to be written and onnxruntime to run.
    """
    import torch

    out = Path(out)
    wrapped = _Normalized.build(copy.deepcopy(model).cpu().eval(), normalization)
    example = torch.zeros(1, in_channels, tile, tile)
    files = {}
    with torch.no_grad():
        if "torchscript" in kinds:
            traced = torch.jit.trace(wrapped, example, check_trace=False)
            torch.jit.save(traced, str(out / "model.ts"))
            files["torchscript"] = out / "model.ts"
        if "onnx" in kinds:
            torch.onnx.export(
                wrapped, (example,), str(out / "model.onnx"), input_names=["input"],
                output_names=["logits"], opset_version=17, dynamo=False,
                dynamic_axes={"input": {0: "n", 2: "h", 3: "w"},
                              "logits": {0: "n", 2: "h", 3: "w"}})
            files["onnx"] = out / "model.onnx"
    return files


def _loss_curve(history: list, out: Path, monitor: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in history], label="training loss", color="C0")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    val = [(r["epoch"], r[f"val_{monitor}"]) for r in history if f"val_{monitor}" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", ms=3, color="C1", label=f"validation {monitor}")
        ax2.set_ylabel(f"validation {monitor}")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = out / "loss_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_log(history: list, out: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (out / "metrics.json").write_text(json.dumps(history, indent=1))


def _is_run(path: str) -> bool:
    """A folder holding only what a training run writes (safe to delete)."""
    return folder_is_replaceable(path, markers=(MARKER_FILE,), what="a chunkseg training run",
                                 owned=RUN_FILES + ("checkpoint.tmp",))


def _prepare_out(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The folder the run writes in: ``cfg.out``, or, when ``overwrite`` replaces an earlier
    run, its staging folder beside it (swapped in by :func:`train` once the run is done)."""
    out = Path(cfg.out)
    staging = Path(staging_path(out))
    if resume:
        for where in (staging, out):  # an interrupted replacement first
            if (where / "checkpoint.pt").is_file():
                return where
        raise NotFoundError(
            f"`resume` needs {str(out / 'checkpoint.pt')!r}, which does not exist. Start "
            "the run without --resume.")
    earlier = check_output_folder(
        out, markers=(MARKER_FILE,), what="a chunkseg training run", overwrite=overwrite,
        owned=RUN_FILES + ("checkpoint.tmp",),
        hint="pass --resume to continue it or --overwrite to replace it")
    if earlier:  # replace only on success: the earlier run stays whole until this one is done
        if staging.exists():
            if not _is_run(str(staging)):
                raise OutputExistsError(
                    f"The staging folder {str(staging)!r} holds files chunkseg did not write; "
                    "chunkseg does not delete it. Move it away and run again.")
            shutil.rmtree(staging)
        out = staging
    out.mkdir(parents=True, exist_ok=True)
    return out


def _environment() -> dict:
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- the loop


def train(config: TrainConfig | Mapping | str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True,
          on_epoch_end: Callable[[dict], None] | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a segmentation network as a :class:`TrainConfig` says.

    Parameters
    ----------
    config : TrainConfig, mapping, or path of a .toml/.json file
    resume : bool, default False
        Continue the run whose ``checkpoint.pt`` is in ``config.out``: the config must be the
        same; model, optimiser, schedule, history, best score and random state are restored,
        and the run goes on from the next epoch as if it had not stopped.
    overwrite : bool, default False
        Replace an earlier run in ``config.out`` (only a folder holding ``train.json`` and
        files a run writes; anything else is refused, never deleted).
    progress : bool, default True
        A tqdm progress bar over each epoch's iterations.
    on_epoch_end : callable, optional
        Called with each epoch's log row after its checkpoint is written.
    log : callable, default print
        Receives one line per epoch.

    Returns
    -------
    TrainResult

    Raises
    ------
    TypeError, ValueError
        For a bad config (before anything is written).
    chunkseg.errors.OutputExistsError
        If ``config.out`` holds files and neither ``resume`` nor ``overwrite`` is given.

    Notes
    -----
    One epoch is ``len(dataset) / batch_size`` iterations (the last partial batch dropped).
    The learning-rate schedule spans ``epochs`` epochs. Validation predicts each validation
    image through :func:`chunkseg.predict` (tile ``val_tile``, overlap ``val_overlap``) and
    pools the confusion matrices of all of them.
    """
    import torch
    from tqdm.auto import tqdm

    from ..io import open_image
    from ..models.architectures import build_model, count_parameters, size_multiple
    from .losses import build_loss

    if isinstance(config, (str, os.PathLike)):
        cfg = TrainConfig.from_file(config)
    elif isinstance(config, Mapping):
        cfg = TrainConfig.from_dict(config)
    elif isinstance(config, TrainConfig):
        cfg = config
    else:
        raise InvalidTypeError(
            f"`config` must be a TrainConfig, a mapping or a config file path. Got {type(config).__name__}.")
    images = [open_image(i) for i, _ in cfg.train]  # lazy; opened once here
    channels = images[0].shape[2]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, in_channels=channels, classes=len(cfg.classes),
                        **cfg.model_options)
    multiple = size_multiple(model)
    if cfg.tile % multiple or (cfg.val_tile or cfg.tile) % multiple:
        raise InvalidValueError(
            f"`tile` and `val_tile` must be multiples of {multiple} (the {cfg.model} network's "
            f"down-sampling). Got tile={cfg.tile}, val_tile={cfg.val_tile}.")
    from ..models.load import _torch_device  # the package's one device check

    device = _torch_device(cfg.device)
    model = model.to(device)
    loss_fn = build_loss(cfg.loss, ignore_index=-100).to(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    normalization = _normalization(cfg, [a.data for a in images])
    data = _dataset(cfg, normalization, sum(a.shape[0] * a.shape[1] for a in images))
    per_epoch = len(data) // cfg.batch_size
    if per_epoch < 1:
        raise InvalidValueError(
            f"`batch_size` must be at most the patches per epoch ({len(data)}). Got "
            f"{cfg.batch_size}; lower it or raise `samples`.")
    final = Path(cfg.out)
    # one writer per run folder: a second train (or --resume) on it is refused
    with acquire(final, command="chunkseg train"):
        out = _prepare_out(cfg, resume, overwrite)  # every check above: nothing written before
        optimizer = _optimizer(cfg, model)
        schedule = _schedule(cfg, optimizer, cfg.epochs * per_epoch)
        average = _averaged(cfg, model)
        history: list[dict] = []
        best: dict = {}
        start_epoch = 1
        mode = MONITORS.get(cfg.monitor, "max")
        if resume:
            state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
            old, new = _with_defaults(state["config"]), cfg.to_dict()
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise InvalidValueError(
                    f"`resume` needs the config of the interrupted run; these settings differ: "
                    f"{diff}. Restore them, or start a new run with --overwrite.")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if average is not None:
                average.load_state_dict(state["ema"])
            history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
            torch.set_rng_state(state["torch_rng"])
            log(f"resuming {out} at epoch {start_epoch}/{cfg.epochs}")
        else:
            (out / MARKER_FILE).write_text(json.dumps({"config": cfg.to_dict(), "status": "running"},
                                                      indent=1))
        loader = torch.utils.data.DataLoader(
            data, batch_size=cfg.batch_size, shuffle=False, drop_last=True,
            num_workers=cfg.workers, persistent_workers=False)
        fmt = torch.channels_last  # faster convolutions on the CPU
        model = model.to(memory_format=fmt)
        if average is not None:
            average = average.to(memory_format=fmt)
        stale = 0 if not history else _stale(history, best, cfg)
        t0 = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs + 1):
            data.set_epoch(epoch)
            model.train()
            losses, terms = [], {}
            bar = tqdm(loader, total=per_epoch, desc=f"epoch {epoch}/{cfg.epochs}",
                       disable=not progress, leave=False)
            tick = time.perf_counter()
            for x, y in bar:
                x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
                loss = loss_fn(model(x), y.to(device, non_blocking=True))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if average is not None:
                    average.update_parameters(model)
                losses.append(float(loss.detach()))
                for k, v in loss_fn.last.items():
                    terms.setdefault(k, []).append(v)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            row = {"epoch": epoch, "iterations": epoch * per_epoch,
                   "train_loss": float(np.mean(losses)),
                   **{f"train_{k}": float(np.mean(v)) for k, v in terms.items()},
                   "lr": float(schedule.get_last_lr()[0]),
                   "train_s": round(time.perf_counter() - tick, 2)}
            if cfg.val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                tick = time.perf_counter()
                net = model if average is None else average.module
                net.eval()
                threads = torch.get_num_threads()  # predict's tasks set their own
                scores = _evaluate_pairs(cfg, net, normalization)
                torch.set_num_threads(threads)
                row.update({f"val_{k}": v for k, v in scores.items()})
                row["val_s"] = round(time.perf_counter() - tick, 2)
                value = scores[cfg.monitor]
                if _better(value, best.get(f"val_{cfg.monitor}"), mode):
                    best = dict(row)
                    torch.save(_cpu(net.state_dict()), out / "best.pt")
                    stale = 0
                else:
                    stale += 1
            history.append(row)
            state = {"model": _cpu(model.state_dict()), "optimizer": optimizer.state_dict(),
                     "schedule": schedule.state_dict(), "epoch": epoch, "history": history,
                     "best": best, "config": cfg.to_dict(), "torch_rng": torch.get_rng_state()}
            if average is not None:
                state["ema"] = _cpu(average.state_dict())
            torch.save(state, out / "checkpoint.tmp")
            os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")
            _write_log(history, out)
            shown = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()
                     if k in ("train_loss", f"val_{cfg.monitor}", "lr")}
            log(f"epoch {epoch}/{cfg.epochs} " + " ".join(f"{k} {v}" for k, v in shown.items())
                + f" ({time.perf_counter() - t0:.0f} s)")
            if on_epoch_end is not None:
                on_epoch_end(row)
            if cfg.patience and stale >= cfg.patience:
                log(f"early stop: no better val_{cfg.monitor} for {stale} validations")
                break
        if average is not None:
            model = average.module  # the averaged network is the result
        if best:
            model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
        model = model.cpu().eval()
        torch.save(model.state_dict(), out / "model.pt")
        files = {"state_dict": out / "model.pt", "checkpoint": out / "checkpoint.pt"}
        files.update(export_model(model, normalization, out, in_channels=channels, tile=cfg.tile,
                                  kinds=cfg.export))
        files["loss_curve"] = _loss_curve(history, out, cfg.monitor)
        record = {"config": cfg.to_dict(), "status": "done", "epochs_run": len(history),
                  "best": best, "last": history[-1] if history else {},
                  "normalization": {"scale": normalization.scale, "mean": list(normalization.mean),
                                    "std": list(normalization.std)},
                  "parameters": count_parameters(model), "patches_per_epoch": len(data),
                  "iterations_per_epoch": per_epoch, "environment": _environment(),
                  "files": {k: p.name for k, p in files.items()}}
        (out / MARKER_FILE).write_text(json.dumps(record, indent=1))
        if out != final:  # a replacement: swapped in now that it is whole
            swap_folder(out, final, _is_run)
            files = {k: final / p.name for k, p in files.items()}
            out = final
    return TrainResult(model=model, history=history, best=best, out=out, files=files)


def _with_defaults(recorded: dict) -> dict:
    """A recorded config with the settings added since it was written at their defaults (a
    run from before ``device`` existed resumes as the CPU run it was)."""
    out = dict(recorded)
    for f in fields(TrainConfig):
        if f.name not in out and f.default is not MISSING:
            out[f.name] = json.loads(json.dumps(f.default))
    return out


def _cpu(state: dict) -> dict:
    """A state_dict with CPU tensors (what is saved: it loads on any machine)."""
    return {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state.items()}


def _stale(history: list, best: dict, cfg: TrainConfig) -> int:
    """Validations since the best one (for a resumed run's patience)."""
    if not best:
        return 0
    later = [r for r in history if r["epoch"] > best["epoch"] and f"val_{cfg.monitor}" in r]
    return len(later)
