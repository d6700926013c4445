"""The folder of a training run: what it holds, how it is prepared, and the checkpoint, log,
marker and loss curve written into it (for :func:`chunkseg.training.train.train`)."""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError, NotFoundError, OutputExistsError
from ..outputs._lifecycle import staging_path
from ..outputs._target import check_output_folder, folder_is_replaceable
from .config import TrainConfig, with_defaults

MARKER_FILE = "train.json"
"""The file that marks a folder as a chunkseg training run (what ``overwrite`` may replace)."""
RUN_FILES = ("checkpoint.pt", "best.pt", "metrics.csv", "metrics.json", "loss_curve.png",
             "model.pt", "model.ts", "model.onnx", MARKER_FILE)
_OWNED = RUN_FILES + ("checkpoint.tmp",)
_WHAT = "a chunkseg training run"


def loss_curve(history: list, out: Path, monitor: str) -> Path:
    """Plot the training loss and the validation ``monitor`` per epoch to ``loss_curve.png``."""
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


def write_log(history: list, out: Path) -> None:
    """Write ``metrics.csv`` and ``metrics.json``: one row per epoch (every key any row has)."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (out / "metrics.json").write_text(json.dumps(history, indent=1))


def is_run(path: str) -> bool:
    """A folder holding only what a training run writes (safe to delete)."""
    return folder_is_replaceable(path, markers=(MARKER_FILE,), what=_WHAT, owned=_OWNED)


def prepare_out(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
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
        out, markers=(MARKER_FILE,), what=_WHAT, overwrite=overwrite, owned=_OWNED,
        hint="pass --resume to continue it or --overwrite to replace it")
    if earlier:  # replace only on success: the earlier run stays whole until this one is done
        if staging.exists():
            if not is_run(str(staging)):
                raise OutputExistsError(
                    f"The staging folder {str(staging)!r} holds files chunkseg did not write; "
                    "chunkseg does not delete it. Move it away and run again.")
            shutil.rmtree(staging)
        out = staging
    out.mkdir(parents=True, exist_ok=True)
    return out


def environment() -> dict:
    """Versions and machine recorded in ``train.json``."""
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": torch.get_num_threads()}


def cpu_state(state: dict) -> dict:
    """A state_dict with CPU tensors (what is saved: it loads on any machine)."""
    return {k: v.detach().cpu() if hasattr(v, "detach") else v for k, v in state.items()}


def write_marker(out: Path, record: dict) -> None:
    """Write the run's ``train.json``: the config and status (and, at the end, the results)."""
    (out / MARKER_FILE).write_text(json.dumps(record, indent=1))


def write_checkpoint(out: Path, *, model, optimizer, schedule, average, epoch: int,
                     history: list, best: dict, config: dict) -> None:
    """Write ``checkpoint.pt`` (atomically, through ``checkpoint.tmp``): everything a resume
    needs, CPU tensors; then the epoch log (``metrics.csv``, ``metrics.json``)."""
    import torch

    state = {"model": cpu_state(model.state_dict()), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "epoch": epoch, "history": history,
             "best": best, "config": config, "torch_rng": torch.get_rng_state()}
    if average is not None:
        state["ema"] = cpu_state(average.state_dict())
    torch.save(state, out / "checkpoint.tmp")
    os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")
    write_log(history, out)


def read_checkpoint(out: Path, config: dict) -> dict[str, Any]:
    """The checkpoint in ``out`` (CPU tensors) of a run with the settings ``config`` (a
    :meth:`TrainConfig.to_dict`), every setting but ``epochs`` the same (a resume may extend
    the run: :func:`check_epochs`).

    Raises
    ------
    ValueError
        If the checkpoint was written with other settings (names them), or ``epochs`` does
        not continue the run (:func:`check_epochs`).
    """
    import torch

    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    old = with_defaults(state["config"])
    diff = sorted(k for k in set(old) | set(config)
                  if k != "epochs" and old.get(k) != config.get(k))
    if diff:
        raise InvalidValueError(
            f"`resume` needs the config of the interrupted run; these settings differ: "
            f"{diff}. Restore them, or start a new run with --overwrite.")
    check_epochs(out, config["epochs"], done=state["epoch"], planned=old["epochs"])
    return state


def check_epochs(out: Path, epochs: int, *, done: int, planned: int) -> None:
    """Refuse ``epochs`` for resuming the run in ``out``, whose checkpoint holds ``done``
    epochs of the ``planned`` ones: a finished run (``train.json`` says ``"done"``, early
    stopping included) needs more than ``planned`` epochs to go on, and no run can go back
    before ``done``. An unfinished run may keep ``planned`` (it finishes, exports included)."""
    try:
        finished = json.loads((out / MARKER_FILE).read_text()).get("status") == "done"
    except (OSError, ValueError, AttributeError):  # unreadable: the checkpoint decides
        finished = False
    if finished and epochs <= planned:
        raise InvalidValueError(
            f"`epochs` must be larger than the run's {planned} to resume "
            f"{str(out)!r}: the run is already finished (it ran {done} epochs). Got "
            f"epochs={epochs}. Pass a larger value to train on from its last checkpoint "
            f"(CLI: --set epochs={planned + 10}), or start a new run with --overwrite.")
    if epochs < done:
        raise InvalidValueError(
            f"`epochs` must be at least the {done} epochs the run in {str(out)!r} has done "
            f"to resume it. Got epochs={epochs}. Pass epochs={planned} (its setting) or more.")
