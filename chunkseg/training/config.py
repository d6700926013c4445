"""The settings of a training run: :class:`TrainConfig`, read from a TOML or JSON file.

``chunkseg train CONFIG [--set KEY=VALUE ...]`` and :func:`chunkseg.training.train.train` take
one; every key is an attribute of :class:`TrainConfig`. Relative paths in a file are relative to
the file's folder; glob patterns in ``train``/``val`` expand to sorted pairs.
"""

from __future__ import annotations

import glob
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .._check import class_index_arg, class_names_arg, label_map_arg, positive_int
from ..errors import InvalidTypeError, InvalidValueError, NotFoundError

__all__ = ["INSTANCE_MONITORS", "MONITORS", "TrainConfig"]

#: Validation metrics :attr:`TrainConfig.monitor` names, with the direction that is better.
MONITORS = {"pixel_error": "min", "accuracy": "max", "mean_iou": "max", "mean_dice": "max",
            "loss": "min", "v_rand": "max", "v_info": "max"}
#: Monitors scored on the objects of :attr:`TrainConfig.object_class` (the instance path).
INSTANCE_MONITORS = ("v_rand", "v_info")


@dataclass(frozen=True, slots=True)
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
        With ``resume``, a larger value than a finished run's extends it (see
        :func:`chunkseg.training.train.train`).
    batch_size : int, default 4
    val_every : int, default 1
        Validate every this many epochs (and after the last).
    monitor : str, default "pixel_error"
        Validation metric that picks the best epoch: ``pixel_error``, ``accuracy``,
        ``mean_iou``, ``mean_dice``, ``iou_<class>``/``dice_<class>``, or ``v_rand``/``v_info``
        (the ISBI 2012 instance scores, higher is better): each validation image is then
        predicted with its probabilities into a temporary Zarr output, its objects labelled
        with ``chunkseg.label(cls=object_class, method="watershed")`` at its defaults and
        scored with ``chunkseg.evaluate_instances`` against the components of
        ``object_class`` in the validation labels; ``val_v_rand``, ``val_v_info`` (and
        their split/merge parts) are the means over the validation images.
    object_class : int or str, optional
        The class whose objects the instance monitors score and whose components are
        ``unet_weighted``'s cells: an index or a name of ``classes``. Default: the first class
        whose name is not background-like (:func:`chunkseg._check.object_class`; ``"cell"``
        for ISBI's ``["cell", "membrane"]``).
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
    object_class: int | str | None = None
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

    def object_index(self) -> int:
        """:attr:`object_class` as a class index (its default resolved).

        Raises
        ------
        chunkseg.errors.InvalidTypeError, chunkseg.errors.InvalidValueError
            As :func:`chunkseg._check.class_index_arg` (e.g. every class name background-like
            and no ``object_class`` given).
        """
        return class_index_arg(self.object_class, self.classes, name="object_class",
                               fix='(in a config file: object_class = "cell" or an index).')

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


def _label_map(value):
    """A file's ``label_map`` table with ``int`` keys and values (TOML and JSON keys are
    strings); :func:`~chunkseg._check.label_map_arg` checks the result (or a non-table)."""
    if not isinstance(value, Mapping):
        return value
    try:
        return {int(k): int(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"`label_map` keys and values must be integers. Got {dict(value)!r}.") from None


def _validate(cfg: TrainConfig) -> None:
    if not cfg.train:
        raise InvalidValueError("`train` must list at least one {image, labels} pair. Got none.")
    example = 'classes = ["background", "foreground"]'
    if isinstance(cfg.classes, Sequence) and len(cfg.classes) == 0:  # required: no default
        raise InvalidValueError(
            f"`classes` must name every class (at least one). Got {cfg.classes!r}; e.g. "
            f"{example}.")
    names = class_names_arg(cfg.classes, fix=f"(in a config file: {example}).")
    object.__setattr__(cfg, "classes", names)
    optional = ("stride", "samples", "patience", "val_tile", "threads")
    for name in ("tile", "epochs", "batch_size", "val_every", *optional):
        value = getattr(cfg, name)
        if value is not None or name not in optional:
            object.__setattr__(cfg, name, positive_int(value, name))
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
    if cfg.object_class is not None or cfg.monitor in INSTANCE_MONITORS:
        cfg.object_index()
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
    object.__setattr__(cfg, "label_map", label_map_arg(cfg.label_map, classes=len(cfg.classes)))
    if cfg.monitor in INSTANCE_MONITORS and cfg.label_map is not None:
        cls = cfg.object_index()
        if cls not in cfg.label_map.values():
            raise InvalidValueError(
                f"`label_map` must send a stored value to the object class {cls} "
                f"({cfg.classes[cls]!r}) for monitor={cfg.monitor!r}: its objects are the "
                f"truth's. Got {cfg.label_map!r}; map a value to {cls} or set `object_class`.")


def with_defaults(recorded: dict) -> dict:
    """A recorded config with the settings added since it was written at their defaults (a
    run from before ``device`` existed resumes as the CPU run it was)."""
    out = dict(recorded)
    for f in fields(TrainConfig):
        if f.name not in out and f.default is not MISSING:
            out[f.name] = json.loads(json.dumps(f.default))
    return out
