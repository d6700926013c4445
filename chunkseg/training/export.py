"""Export the shipped U-Net as a bioimage.io model package (format 0.5, https://bioimage.io).

:func:`export_bioimageio` writes the built-in ``isbi2012-unet`` as a package, built with
``bioimageio.spec``'s own description classes and validated by it: its TorchScript weights,
test tensors, samples, cover, documentation, license and citations, and a preprocessing equal
to chunkseg's :class:`~chunkseg.models.Normalization`. :mod:`chunkseg.models.bioimageio` reads
such a package back as a chunkseg model.

Needs ``bioimageio.spec`` (``pip install 'chunkseg[bioimageio]'``), torch and pillow, imported
only when a package is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import InvalidValueError, MissingDependencyError
from ..models.bioimageio import (
    YAML_NAMES,
    _import_spec,
    _pick_tile,
    _quiet_spec,
    _raise_invalid,
)
from ..models.load import BUILTIN_MODELS, model_defaults
from ..models.spec import Normalization
from ..outputs._lifecycle import replacing, swap_folder
from ..outputs._ownership import write_record
from ..outputs._target import check_output_files, check_output_folder, folder_is_replaceable

__all__ = ["export_bioimageio"]

# What the shipped model's package says about itself (chunkseg/data/MODEL_CARD.md).
_ISBI_PIXEL_NM = 4.0
_ISBI_TEST_SECTION = Path(__file__).resolve().parent.parent / "data" / "isbi2012_test" / "00.png"
_ISBI_CARD = Path(__file__).resolve().parent.parent / "data" / "MODEL_CARD.md"
_ISBI_RUN = Path(__file__).resolve().parent.parent / "data" / "isbi2012_unet.json"
_ISBI_DEFAULT_OVERLAP = 64  # chunkseg's default overlap, the one the model card measured
_ISBI_CITATIONS = (
    ("Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
     "Segmentation. MICCAI 2015, LNCS 9351, 234-241.", "10.1007/978-3-319-24574-4_28"),
    ("Cardona A. et al. An integrated micro- and macroarchitectural analysis of the Drosophila "
     "brain by computer-assisted serial section electron microscopy. PLoS Biology 8(10): "
     "e1000502 (2010). The training data.", "10.1371/journal.pbio.1000502"),
    ("Arganda-Carreras I. et al. Crowdsourcing the creation of image segmentation algorithms "
     "for connectomics. Frontiers in Neuroanatomy 9:142 (2015). The ISBI 2012 challenge.",
     "10.3389/fnana.2015.00142"),
)



def export_bioimageio(
    out: str | os.PathLike,
    *,
    model: str = "isbi2012-unet",
    halo: int | None = None,
    test_size: int = 256,
    overwrite: bool = False,
) -> Path:
    """Write the shipped model as a bioimage.io model package (format 0.5), validated.

    Parameters
    ----------
    out : str or os.PathLike
        A path ending in ``.zip`` writes a zip package; any other path a folder (created; it must
        be empty or missing, or a package written before with ``overwrite=True``).
    model : str, default "isbi2012-unet"
        The built-in model to export (only ``"isbi2012-unet"`` ships).
    halo : int, optional
        Output halo, pixels cropped from each side of an output tile. Default 32: half of
        chunkseg's default overlap of 64, the overlap the model card measured (tile 256,
        overlap 64). The shipped model's receptive field is 188 px, so pixels within 94 px of a
        tile border see zero padding; a halo of 32 leaves the blending window to hide the rest.
    test_size : int, default 256
        Side of the test tensor: the centre crop of the shipped test section 00, a multiple
        of the shipped U-Net's ``2**depth`` (16), at most 512.
    overwrite : bool, default False
        Replace an existing package at ``out``.

    Returns
    -------
    pathlib.Path
        The written ``rdf.yaml`` (folder package) or ``.zip``.

    Raises
    ------
    MissingDependencyError
        If bioimageio.spec, torch or pillow is not installed.
    InvalidValueError
        If ``model`` is not a built-in model, or ``halo`` or ``test_size`` is out of range.
    OutputExistsError
        If ``out`` holds something and ``overwrite`` is False, or holds other files.

    Notes
    -----
    The package holds ``isbi2012_unet.pt`` (TorchScript, traced from the shipped U-Net, 8 MB),
    ``test_input.npy`` (float32 ``(1, 1, S, S)``: raw intensities 0-255, before preprocessing),
    ``test_output.npy`` (float32 ``(1, 2, S, S)``: class probabilities, the model's softmax),
    the same as ``sample_input.png`` and ``sample_output.tif``, ``cover.png`` (the input beside
    its membrane probability), ``README.md`` (a validation section, then the model card) and
    ``rdf.yaml``: 9.0 MB as a folder, 8.5 MB zipped, written in a few seconds on 2 CPU cores (the
    first call imports bioimageio.spec and traces the model).

    The preprocessing is ``fixed_zero_mean_unit_variance`` with ``mean = ISBI_MEAN / ISBI_SCALE``
    and ``std = ISBI_STD / ISBI_SCALE``, the same map as chunkseg's ``(x * scale - mean) / std``
    (checked to 1e-6 on 0..255); the postprocessing is a softmax over the channels. Space axes
    take any size ``min + 2**depth n``, ``min`` the smallest multiple of ``2**depth`` above twice
    the halo (``80 + 16 n`` for the shipped depth-4 U-Net and the default halo).
    ``config.chunkseg`` records the Normalization, tile and overlap.
    """
    spec = _import_spec()
    if model != "isbi2012-unet":
        raise InvalidValueError(
            f"`model` must be a built-in model to export. Got {model!r}; use 'isbi2012-unet'."
        )
    halo = _ISBI_DEFAULT_OVERLAP // 2 if halo is None else halo
    if isinstance(halo, bool) or not isinstance(halo, int) or not 1 <= halo <= 256:
        raise InvalidValueError(f"`halo` must be an int in [1, 256]. Got {halo!r}.")
    from ..models.unet import UNet, shipped_options  # torch

    step = UNet(**shipped_options()).multiple  # the shipped U-Net's input multiple
    if (isinstance(test_size, bool) or not isinstance(test_size, int) or test_size % step
            or not 2 * halo < test_size <= 512):
        raise InvalidValueError(
            f"`test_size` must be a multiple of {step} in ({2 * halo}, 512] (above twice the "
            f"halo, at most the 512 px test section). Got {test_size!r}."
        )
    out = Path(out)
    as_zip = out.suffix.lower() == ".zip"
    earlier = _check_target(out, as_zip, overwrite)
    with tempfile.TemporaryDirectory(prefix="chunkseg-bioimageio-") as tmp, _quiet_spec():
        descr = _isbi_description(Path(tmp), halo, test_size)
        if as_zip:  # written (and validated by bioimageio.spec) beside, then moved in place
            with replacing(out) as part:
                spec.save_bioimageio_package(descr, output_path=part)
            return out
        # replace only on success: an earlier package stays whole until the new one is; the
        # new one is written into a folder this call creates beside it (removed on failure)
        target = Path(tempfile.mkdtemp(prefix=f".{out.name}.chunkseg-new-",
                                       dir=_parent(out))) if earlier else out
        try:
            folder = Path(spec.save_bioimageio_package_as_folder(descr, output_path=target))
            # the ownership record: what a later overwrite may replace, and nothing else
            write_record(folder, [p for p in folder.rglob("*") if p.is_file()],
                         "a bioimage.io package")
            name = next(n for n in YAML_NAMES if (folder / n).is_file())
            check = spec.load_description(folder / name, perform_io_checks=True)
            if isinstance(check, spec.InvalidDescr):  # pragma: no cover - a bug here
                _raise_invalid(str(folder / name), check)
            if earlier:
                swap_folder(folder, out, _is_package)
        finally:
            if earlier and target.exists():
                shutil.rmtree(target)
    return out / name


def _parent(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path.parent)


def _is_package(path: str) -> bool:
    """A folder holding only the files its package record lists (safe to delete)."""
    return folder_is_replaceable(path, markers=YAML_NAMES, what="a bioimage.io package")


def _check_target(out: Path, as_zip: bool, overwrite: bool) -> bool:
    """The one output check (:func:`chunkseg.outputs._target.check_output_files` for a .zip,
    :func:`~chunkseg.outputs._target.check_output_folder` for a folder). Returns whether a
    folder package written before is there (to be replaced, once the new one is whole)."""
    if as_zip:
        check_output_files([out], overwrite=overwrite)
        return False
    return bool(check_output_folder(out, markers=YAML_NAMES, what="a bioimage.io package",
                                    overwrite=overwrite, hint="pass overwrite=True to "
                                    "replace a package written before"))


def _isbi_description(tmp: Path, halo: int, test_size: int):
    """The ModelDescr of the shipped U-Net, its files written to ``tmp``."""
    torch = _import_torch()
    from bioimageio.spec.model import v0_5

    from ..models.unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD, pretrained  # torch

    net = pretrained("cpu")
    step = net.multiple
    minimum = step * (2 * halo // step + 1)  # smallest multiple of step above twice the halo
    norm = BUILTIN_MODELS["isbi2012-unet"][1]()
    mean, std = ISBI_MEAN / ISBI_SCALE, ISBI_STD / ISBI_SCALE
    _check_equivalent(norm, mean, std)

    raw = _test_crop(test_size)  # float32 (1, 1, S, S), 0..255
    weights = tmp / "isbi2012_unet.pt"
    traced = _trace(torch, net, test_size)
    traced.save(str(weights))
    with torch.inference_mode():
        logits = traced(torch.from_numpy((raw - np.float32(mean)) / np.float32(std)))
        probs = torch.softmax(logits, dim=1).numpy().astype(np.float32)
    np.save(tmp / "test_input.npy", raw)
    np.save(tmp / "test_output.npy", probs)
    _write_samples(tmp, raw[0, 0], probs[0])
    _write_cover(tmp / "cover.png", raw[0, 0], probs[0, 1])
    tile = _pick_tile(minimum, step, 2 * halo)
    (tmp / "README.md").write_text(_documentation(halo, tile, minimum, step, mean, std), "utf-8")

    unit, scale = "nanometer", _ISBI_PIXEL_NM
    y_in = v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=v0_5.ParameterizedSize(
        min=minimum, step=step), unit=unit, scale=scale)
    x_in = v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=v0_5.ParameterizedSize(
        min=minimum, step=step), unit=unit, scale=scale)
    in_id = v0_5.TensorId("raw")
    ipt = v0_5.InputTensorDescr(
        id=in_id,
        description="raw TEM intensities 0-255 (uint8 values as float32)",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=["em"]), y_in, x_in],
        test_tensor=v0_5.FileDescr(source=tmp / "test_input.npy"),
        sample_tensor=v0_5.FileDescr(source=tmp / "sample_input.png"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)),
        preprocessing=[
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            v0_5.FixedZeroMeanUnitVarianceDescr(
                kwargs=v0_5.FixedZeroMeanUnitVarianceKwargs(mean=mean, std=std)),
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        ],
    )
    out_axes = [
        v0_5.BatchAxis(),
        v0_5.ChannelAxis(channel_names=list(model_defaults("isbi2012-unet")["class_names"])),
        *(v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(a), size=v0_5.SizeReference(tensor_id=in_id, axis_id=v0_5.AxisId(a)),
            halo=halo, unit=unit, scale=scale) for a in ("y", "x")),
    ]
    output = v0_5.OutputTensorDescr(
        id=v0_5.TensorId("probabilities"),
        description="class probabilities: softmax over the channels (cell, membrane)",
        axes=out_axes,
        test_tensor=v0_5.FileDescr(source=tmp / "test_output.npy"),
        sample_tensor=v0_5.FileDescr(source=tmp / "sample_output.tif"),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[v0_5.SoftmaxDescr(kwargs=v0_5.SoftmaxKwargs(axis=v0_5.AxisId("channel")))],
    )
    run = _read_json(_ISBI_RUN)
    config = v0_5.Config(
        bioimageio=v0_5.BioimageioConfig(
            architecture_type="UNet",
            architecture_description=(
                f"chunkseg.models.unet.UNet(in_channels=1, classes=2, base_channels="
                f"{net.base_channels}, depth={net.depth}): padded 3x3 convolutions with "
                f"BatchNorm, {net.depth} max-poolings, receptive field "
                f"{run.get('receptive_field_px', 'unknown')} px."),
            modality="electron microscopy", target_structure=["cell membrane"],
            task="semantic segmentation", model_parameter_count=int(run.get("parameters", 0))
            or None,
        ),
        chunkseg={"model": "isbi2012-unet", "version": __version__,
                  "normalization": norm.to_dict(), "tile": tile, "overlap": 2 * halo},
    )
    return v0_5.ModelDescr(
        name="ISBI 2012 membrane U-Net (chunkseg)",
        description="A small 2-D U-Net that labels every pixel of a serial-section TEM image of "
                    "neural tissue (ISBI 2012, Drosophila larva VNC, 4 nm pixels) as cell "
                    "interior or membrane. The demonstration model of chunkseg's tiled "
                    "inference; runs on a CPU.",
        authors=[v0_5.Author(name="chunkseg maintainers")],
        cite=[v0_5.CiteEntry(text=t, doi=v0_5.Doi(d)) for t, d in _ISBI_CITATIONS],
        license=v0_5.LicenseId("BSD-3-Clause"),
        documentation=v0_5.FileDescr(source=tmp / "README.md"),
        covers=[v0_5.FileDescr(source=tmp / "cover.png")],
        tags=["electron-microscopy", "2d", "cell-membrane", "brain", "pytorch", "unet",
              "semantic-segmentation", "isbi2012", "chunkseg"],
        version=v0_5.Version("0.1.0"),
        inputs=[ipt],
        outputs=[output],
        weights=v0_5.WeightsDescr(torchscript=v0_5.TorchscriptWeightsDescr(
            source=weights, pytorch_version=v0_5.Version(torch.__version__.split("+")[0]),
            comment="torch.jit.trace of chunkseg.models.unet.pretrained() (ISBI 2012 weights).")),
        config=config,
    )


def _check_equivalent(norm: Normalization, mean: float, std: float) -> None:
    """The package's preprocessing must be chunkseg's normalisation: checked on 0..255."""
    x = np.arange(256, dtype=np.float64)
    ours = norm(x.astype(np.float32).reshape(1, 1, 1, -1)).ravel()
    theirs = (x - mean) / std
    if not np.allclose(ours, theirs, rtol=1e-6, atol=1e-6):  # pragma: no cover - a bug here
        raise AssertionError("fixed_zero_mean_unit_variance does not equal the Normalization")


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "Exporting the shipped model needs torch: pip install 'chunkseg[torch]'.") from e
    return torch


def _trace(torch, net, size: int):
    """TorchScript of the U-Net by tracing (its input checks are Python, left out of the trace;
    the package's parameterized sizes state the multiple-of-8 rule instead)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on the shape checks, jit deprecation
        with torch.inference_mode(False), torch.no_grad():
            return torch.jit.trace(net, torch.zeros(1, 1, size, size), check_trace=False)


def _test_crop(size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "Exporting the shipped model needs pillow: pip install 'chunkseg[io]'.") from e
    section = np.asarray(Image.open(_ISBI_TEST_SECTION).convert("L"))
    y0, x0 = (section.shape[0] - size) // 2, (section.shape[1] - size) // 2
    crop = section[y0:y0 + size, x0:x0 + size]
    return crop.astype(np.float32)[None, None]


def _write_cover(path: Path, raw: np.ndarray, membrane: np.ndarray) -> None:
    """A 2:1 PNG: the test input beside its membrane probability."""
    from PIL import Image

    left = np.clip(raw, 0, 255).astype(np.uint8)
    right = np.clip(np.rint(membrane * 255), 0, 255).astype(np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _write_samples(tmp: Path, raw: np.ndarray, probs: np.ndarray) -> None:
    """The sample tensors bioimage.io shows: the input as a PNG, the output as a TIFF."""
    import tifffile
    from PIL import Image

    Image.fromarray(np.clip(raw, 0, 255).astype(np.uint8)).save(tmp / "sample_input.png")
    tifffile.imwrite(tmp / "sample_output.tif", probs.astype(np.float32))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):  # pragma: no cover - a broken install
        return {}


def _documentation(halo: int, tile: int, minimum: int, step: int, mean: float,
                   std: float) -> str:
    run = _read_json(_ISBI_RUN)
    held = run.get("held_out", {})
    card = _ISBI_CARD.read_text("utf-8") if _ISBI_CARD.is_file() else ""
    lines = [
        "# ISBI 2012 membrane U-Net (chunkseg), bioimage.io package",
        "",
        "Exported by `chunkseg.training.export.export_bioimageio` from chunkseg's built-in model "
        "`isbi2012-unet`. Input: one channel of raw TEM intensities 0-255. Output: per-pixel "
        "probabilities of the classes `cell` (cell interior, channel 0) and `membrane` "
        "(channel 1).",
        "",
        "- Preprocessing: `fixed_zero_mean_unit_variance` with mean "
        f"{mean:.6f} and std {std:.6f}, i.e. chunkseg's `(x / 255 - 0.486477) / 0.166526`.",
        "- Postprocessing: softmax over the channels (chunkseg itself blends the logits of "
        "overlapping tiles, then takes the softmax).",
        f"- Valid sizes: any `{minimum} + {step} n` pixels per space axis "
        f"({int(math.log2(step))} poolings).",
        f"- Halo: {halo} px; chunkseg runs the package with tile {tile} and overlap "
        f"{2 * halo} (twice the halo). The default halo, 32, is half of chunkseg's default "
        "overlap, 64, with which the scores below were measured through the tiled engine; the "
        f"receptive field is {run.get('receptive_field_px', 'unknown')} px.",
        "- Run with chunkseg: `chunkseg predict image.zarr seg.zarr --model rdf.yaml`.",
        "",
        "## Validation",
        "",
        "Held out: ISBI 2012 training sections 20-24, never trained on (they chose the best "
        "epoch), each whole 512 x 512 section in one pass, argmax labels: "
        f"pixel error {held.get('pixel_error', float('nan')):.4f}, membrane IoU "
        f"{held.get('membrane_iou', float('nan')):.4f}, membrane Dice "
        f"{held.get('membrane_dice', float('nan')):.4f}, cell IoU "
        f"{held.get('cell_iou', float('nan')):.4f} (always predicting cell interior: pixel error "
        f"{held.get('trivial_pixel_error', float('nan')):.4f}). To validate on other data, "
        "compare the argmax labels with annotated sections (`chunkseg.evaluation.metrics`).",
        "",
    ]
    if card:
        lines += ["", card.replace("# Model card", "## Model card", 1)]
    return "\n".join(lines)
