"""Train a segmentation network on patches of big images: ``chunkseg train CONFIG``.

A run is described by a :class:`~chunkseg.training.config.TrainConfig` (a TOML or JSON file;
re-exported here): (image, labels) pairs for training and validation, the patch sampling and
augmentation (:class:`chunkseg.training.patches.PatchDataset`), the architecture
(:func:`chunkseg.models.architectures.build_model`), the loss
(:func:`chunkseg.training.losses.build_loss`), the optimiser and learning-rate schedule, and early
stopping on a validation metric. Validation runs the network through :func:`chunkseg.predict`
on each whole validation image (the tiled engine, as at inference) and scores it with
:func:`chunkseg.evaluation.evaluate`.

The output folder holds, as each epoch ends: ``checkpoint.pt`` (everything a resume needs),
``best.pt`` (the best weights so far), ``metrics.csv`` and ``metrics.json`` (one row per epoch),
and at the end ``loss_curve.png``, ``model.pt`` (a state_dict of the best epoch), ``model.ts``
(TorchScript) and ``model.onnx``, both with the input normalisation and the class names built in, so
``chunkseg predict IMAGE OUT --model run/model.ts`` needs no other setting, and ``train.json``
(the config, the best epoch and its scores, the environment). The same folder written by a
later ``--resume`` run continues the interrupted training where its last checkpoint left it
(the folder and its files: ``chunkseg.training._run``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from .. import engine
from ..errors import InvalidTypeError, InvalidValueError
from ..evaluation.confusion import confusion_matrix_dask
from ..evaluation.instances import evaluate_instances
from ..evaluation.metrics import scores_from_confusion
from ..io import open_image
from ..models.adapters import _torch_device
from ..models.architectures import build_model, count_parameters, size_multiple
from ..models.spec import Normalization
from ..objects.instances import label
from ..outputs._lease import acquire
from ..outputs._lifecycle import swap_folder
from ._run import (
    cpu_state,
    environment,
    is_run,
    loss_curve,
    prepare_out,
    read_checkpoint,
    write_checkpoint,
    write_marker,
)
from .config import INSTANCE_MONITORS, MONITORS, TrainConfig
from .losses import build_loss

__all__ = ["TrainConfig", "TrainResult", "export_model", "train"]


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
    if isinstance(cfg.normalization, Mapping):
        return Normalization.from_dict(cfg.normalization)
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
    from .patches import PatchDataset, augmentation  # torch (patches imports it at module level)

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
    """Run the network through chunkseg.predict on every validation pair; pooled scores, and
    with an instance monitor (``v_rand``, ``v_info``) the mean instance scores
    (:func:`_instance_scores`)."""
    tile = cfg.val_tile or cfg.tile
    overlap = cfg.val_overlap if cfg.val_overlap is not None else tile // 4
    instances = cfg.monitor in INSTANCE_MONITORS
    total, scored = None, []
    with tempfile.TemporaryDirectory(prefix="chunkseg-val-") as folder:
        for n, (image, labels) in enumerate(cfg.val):
            if instances:  # written with its probabilities: the store chunkseg.label reads
                store = os.path.join(folder, f"val{n}.zarr")
                ds = engine.predict_to_zarr(
                    image, model, store, tile=tile, overlap=overlap, window=cfg.val_window,
                    normalization=normalization, outputs=("labels", "probabilities"),
                    tta=cfg.val_tta, device=cfg.device, classes=cfg.classes)
                scored.append(_instance_scores(cfg, store, labels))
            else:
                ds = engine.predict(image, model, tile=tile, overlap=overlap,
                                    window=cfg.val_window, normalization=normalization,
                                    outputs="labels", tta=cfg.val_tta, device=cfg.device)
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
    for key in _INSTANCE_KEYS if scored else ():
        row[key] = float(np.mean([s[key] for s in scored]))
    return row


_INSTANCE_KEYS = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
                  "v_info_merge")


def _instance_scores(cfg: TrainConfig, store: str, labels: str) -> dict:
    """The instance path a user runs, on one written validation output: ``chunkseg.label``
    (watershed on the object class's probability, its defaults), then
    ``chunkseg.evaluate_instances`` against the components of the object class's stored
    values in ``labels`` (the values ``label_map`` sends to it; without one, the index)."""
    cls = cfg.object_index()
    label(store, cls=cls, method="watershed")
    truth_class: int | list[int] = cls  # TrainConfig checked that label_map has one
    if cfg.label_map is not None:
        truth_class = sorted(v for v, k in cfg.label_map.items() if k == cls)
    return evaluate_instances(store, labels, truth_class=truth_class)


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
                 tile: int, kinds: Sequence[str] = ("torchscript", "onnx"),
                 class_names: Sequence[str] | None = None) -> dict:
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
    class_names : sequence of str, optional
        The classes of the output channels, kept in each file as chunkseg's metadata
        (:data:`chunkseg.models.adapters.MODEL_METADATA`: a TorchScript extra file, an ONNX
        ``metadata_props`` entry), so a run of the file names its classes as the training did
        (``chunkseg predict ... --model run/model.ts`` writes them, not ``0, 1``). Default:
        none kept.

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

    from ..models.adapters import MODEL_METADATA

    out = Path(out)
    meta = {} if class_names is None else {
        MODEL_METADATA: json.dumps({"class_names": [str(n) for n in class_names]})}
    wrapped = _Normalized.build(copy.deepcopy(model).cpu().eval(), normalization)
    example = torch.zeros(1, in_channels, tile, tile)
    files = {}
    with torch.no_grad():
        if "torchscript" in kinds:
            traced = torch.jit.trace(wrapped, example, check_trace=False)
            torch.jit.save(traced, str(out / "model.ts"), _extra_files=meta)
            files["torchscript"] = out / "model.ts"
        if "onnx" in kinds:
            torch.onnx.export(
                wrapped, (example,), str(out / "model.onnx"), input_names=["input"],
                output_names=["logits"], opset_version=17, dynamo=False,
                dynamic_axes={"input": {0: "n", 2: "h", 3: "w"},
                              "logits": {0: "n", 2: "h", 3: "w"}})
            if meta:  # torch.onnx.export needs the onnx package: it is there
                import onnx

                proto = onnx.load(str(out / "model.onnx"))
                onnx.helper.set_model_props(proto, meta)
                onnx.save(proto, str(out / "model.onnx"))
            files["onnx"] = out / "model.onnx"
    return files


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
        and the run goes on from the next epoch as if it had not stopped. ``epochs`` alone
        may differ: a larger value extends a finished run (``chunkseg train CONFIG --resume
        --set epochs=N``) from its last checkpoint to ``N`` epochs, the same as a run of
        ``N`` epochs where the settings do not depend on ``epochs`` (a ``constant`` schedule;
        a ``cosine`` one, which spanned the original epochs, goes on as torch's
        ``CosineAnnealingLR`` does past its end: back up the same cosine, ``k`` iterations
        past the end at the rate of ``k`` iterations before it; and ``patience`` still
        counts the validations since the best). A finished run resumed
        with ``epochs`` at most its own is refused (already finished).
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
    chunkseg.errors.InvalidValueError
        With ``resume``, if the checkpoint's config differs in more than ``epochs``, or if
        ``epochs`` does not extend a finished run (or is below the epochs done).

    Notes
    -----
    One epoch is ``len(dataset) / batch_size`` iterations (the last partial batch dropped).
    The learning-rate schedule spans ``epochs`` epochs. Validation predicts each validation
    image through :func:`chunkseg.predict` (tile ``val_tile``, overlap ``val_overlap``) and
    pools the confusion matrices of all of them; with ``monitor="v_rand"`` or ``"v_info"``
    it writes each prediction with its probabilities to a temporary Zarr output
    (:func:`chunkseg.predict_to_zarr`), labels its objects with :func:`chunkseg.label`
    (``method="watershed"``, its defaults) and scores them with
    :func:`chunkseg.evaluate_instances`, averaging the scores over the validation images.
    """
    import torch
    from tqdm.auto import tqdm

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
    device = _torch_device(cfg.device)  # the package's one device check
    model = model.to(device)
    try:
        cells = cfg.object_index()
    except InvalidValueError:  # no default object class: only unet_weighted needs one
        cells = None
    loss_fn = build_loss(cfg.loss, ignore_index=-100, object_class=cells).to(device)
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
        out = prepare_out(cfg, resume, overwrite)  # every check above: nothing written before
        optimizer = _optimizer(cfg, model)
        schedule = _schedule(cfg, optimizer, cfg.epochs * per_epoch)
        average = _averaged(cfg, model)
        history: list[dict] = []
        best: dict = {}
        start_epoch = 1
        mode = MONITORS.get(cfg.monitor, "max")
        if resume:
            state = read_checkpoint(out, cfg.to_dict())
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            if average is not None:
                average.load_state_dict(state["ema"])
            history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
            torch.set_rng_state(state["torch_rng"])
            log(f"resuming {out} at epoch {start_epoch}/{cfg.epochs}")
            # an extension of a finished run is running again (not "done") until it ends
            write_marker(out, {"config": cfg.to_dict(), "status": "running"})
        else:
            write_marker(out, {"config": cfg.to_dict(), "status": "running"})
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
                    torch.save(cpu_state(net.state_dict()), out / "best.pt")
                    stale = 0
                else:
                    stale += 1
            history.append(row)
            write_checkpoint(out, model=model, optimizer=optimizer, schedule=schedule,
                             average=average, epoch=epoch, history=history, best=best,
                             config=cfg.to_dict())
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
                                  kinds=cfg.export, class_names=cfg.classes))
        files["loss_curve"] = loss_curve(history, out, cfg.monitor)
        record = {"config": cfg.to_dict(), "status": "done", "epochs_run": len(history),
                  "best": best, "last": history[-1] if history else {},
                  "normalization": {"scale": normalization.scale, "mean": list(normalization.mean),
                                    "std": list(normalization.std)},
                  "parameters": count_parameters(model), "patches_per_epoch": len(data),
                  "iterations_per_epoch": per_epoch, "environment": environment(),
                  "files": {k: p.name for k, p in files.items()}}
        write_marker(out, record)
        if out != final:  # a replacement: swapped in now that it is whole
            swap_folder(out, final, is_run)
            files = {k: final / p.name for k, p in files.items()}
            out = final
    return TrainResult(model=model, history=history, best=best, out=out, files=files)


def _stale(history: list, best: dict, cfg: TrainConfig) -> int:
    """Validations since the best one (for a resumed run's patience)."""
    if not best:
        return 0
    later = [r for r in history if r["epoch"] > best["epoch"] and f"val_{cfg.monitor}" in r]
    return len(later)
