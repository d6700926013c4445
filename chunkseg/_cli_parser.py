"""The ``chunkseg`` command's argument parser: its subcommands, options and their text forms
(:func:`build_parser`). The commands themselves are in :mod:`chunkseg.cli`."""

from __future__ import annotations

import argparse

__all__ = ["build_parser", "option_flags"]


class _Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that keeps the actions ``add_argument`` returns and
    the action ``add_subparsers`` returns, so that :func:`option_flags` reads a command's
    options from the parser itself (argparse has no public list of them)."""

    def __init__(self, *args, **kwargs) -> None:
        self.arguments: list[argparse.Action] = []  # before __init__ adds --help
        self.commands: argparse.Action | None = None
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # noqa: D102
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def add_subparsers(self, **kwargs) -> argparse.Action:  # noqa: D102
        self.commands = super().add_subparsers(**kwargs)
        return self.commands


def option_flags(parser: argparse.ArgumentParser, command: str) -> dict[str, tuple[str, bool]]:
    """The options of one subcommand of :func:`build_parser`'s parser.

    Returns
    -------
    dict
        ``dest -> (flag, switch)``: the option's long flag (``"--batch-size"``) and whether it
        is an on/off switch (``store_true``: it takes no value); ``--help`` left out. Empty
        for a parser not built by :func:`build_parser` or an unknown command.
    """
    commands = getattr(parser, "commands", None)
    sub = commands.choices.get(command) if commands is not None else None
    flags = {}
    for action in getattr(sub, "arguments", ()):
        long = [o for o in action.option_strings if o.startswith("--")]
        if long and action.dest != "help":
            flags[action.dest] = (long[0], action.nargs == 0 and action.const is True)
    return flags


def _pair(text: str) -> int | tuple[int, int]:
    """``"256"`` -> 256, ``"256,128"`` or ``"256x128"`` -> (256, 128)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'Y,X', got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    raise argparse.ArgumentTypeError(f"expected an int or 'Y,X', got {text!r}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _planes(text: str) -> dict:
    """``--planes z=10:20,t=0`` -> ``{"z": slice(10, 20), "t": 0}``
    (:func:`chunkseg._check.parse_planes`; its message on a bad value)."""
    from ._check import parse_planes
    from .errors import ChunksegError

    try:
        return parse_planes(text)
    except ChunksegError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_planes_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--planes", type=_planes, default=None,
                   help="planes of a stack to read, by axis: z=10, z=10:20 or z=10:20,t=0 "
                        "(default: all; a stack runs plane by plane)")


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",")]


def _add_grid_args(p: argparse.ArgumentParser, chunk_default=None, from_model=False) -> None:
    if from_model:  # predict: the model's own tile and overlap (a bioimage.io package's)
        p.add_argument("--tile", type=_pair, default=None,
                       help="tile size, px: N or Y,X (the model's, else 256)")
        p.add_argument("--overlap", type=_pair, default=None,
                       help="tile overlap, px (the model's, else 64)")
    else:
        p.add_argument("--tile", type=_pair, default=256, help="tile size, px: N or Y,X (256)")
        p.add_argument("--overlap", type=_pair, default=64, help="tile overlap, px (64)")
    p.add_argument("--chunk", type=_pair, default=chunk_default,
                   help="computation/output chunk, px, any size >= the tile is best "
                        "(default 1536; 2048 with --device cuda)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per model call (8)")


def _add_run_args(p: argparse.ArgumentParser, workers: bool = True) -> None:
    p.add_argument("--scheduler", default=None, help="scheduler name or address")
    if workers:
        p.add_argument("--workers", type=int, default=None,
                       help="start a LocalCluster of N workers")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="chunkseg",
        description="Seamless out-of-core segmentation of huge images with Dask and Zarr.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("ingest", help="convert PNG/JPEG/TIFF/Zarr to an OME-NGFF image "
                       "(Zarr v3, pyramid, pixel size)")
    p.add_argument("source", help="image file, Zarr store or URL")
    p.add_argument("store", help="output Zarr path or URL")
    p.add_argument("--chunk", type=_pair, default=1024, help="Zarr chunk, px (1024)")
    p.add_argument("--array-name", default=None, help="array inside a source Zarr group")
    _add_planes_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--levels", type=int, default=None,
                   help="pyramid levels, full resolution included (default: halve to 512 px)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("plan", help="show the tile grid and chunks, reading no pixels")
    p.add_argument("image", help="image path/URL, or a shape such as 40000x40000[x3]")
    _add_grid_args(p)
    _add_planes_arg(p)
    p.add_argument("--classes", type=int, default=2, help="classes, for the memory estimate")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("predict", help="segment an image and write logits/labels to Zarr")
    p.add_argument("image", help="input image: Zarr path/URL or a PNG/JPEG/TIFF file")
    p.add_argument("store", help="output Zarr group path or URL")
    p.add_argument("--model", default=None,
                   help="'isbi2012-unet', a TorchScript .pt, an .onnx, a bioimage.io rdf.yaml "
                        "or .zip, or package.module:factory (required; with --resume, the "
                        "output's recorded model)")
    _add_grid_args(p, from_model=True)
    p.add_argument("--window", default="gaussian",
                   help="uniform | linear | gaussian | cosine, or a .npy file (gaussian)")
    p.add_argument("--outputs", default="logits,labels",
                   help="comma-separated: logits,probabilities,labels (logits,labels)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="dtype of logits/probabilities")
    p.add_argument("--device", default="cpu", help="torch/ONNX device: cpu, cuda, cuda:1 (cpu)")
    p.add_argument("--kernel", default="auto", choices=("auto", "torch", "numpy"),
                   help="per-chunk kernel: torch keeps each chunk on the model's device, numpy "
                        "is the reference (auto: torch for torch models)")
    p.add_argument("--tta", default=None, choices=("flips", "d4"),
                   help="test-time augmentation: average each tile's logits over its 4 mirrored "
                        "(flips) or 8 rotated/mirrored (d4) copies (none)")
    p.add_argument("--array-name", default=None, help="array inside an input Zarr group")
    _add_planes_arg(p)
    p.add_argument("--classes", type=_names, default=None,
                   help="class names, comma-separated, one per class (the model's, else 0,1..)")
    p.add_argument("--ome", action="store_true",
                   help="write OME-Zarr 0.5: an NGFF image with a pyramid and the labels as an "
                        "NGFF label image, for napari and other OME-Zarr viewers")
    p.add_argument("--levels", type=int, default=None,
                   help="with --ome: pyramid levels, full resolution included (default: halve "
                        "until the larger side is <= 512 px)")
    p.add_argument("--labels-into-source", action="store_true",
                   help="with --ome: also write the label image into the input's own NGFF "
                        "labels/ group (the input must be an OME-NGFF 0.5 image)")
    p.add_argument("--mask", default=None,
                   help="low-resolution foreground mask (.npy, PNG/TIFF or Zarr); tiles that "
                        "touch no foreground are skipped (NaN logits, label 0 there)")
    p.add_argument("--scale", type=float, default=None, help="input normalisation: x * scale")
    p.add_argument("--mean", type=_floats, default=None, help="... minus mean (per channel)")
    p.add_argument("--std", type=_floats, default=None, help="... divided by std (per channel)")
    p.add_argument("--scheduler", default=None,
                   help="'threads' (default), 'processes', or a scheduler address tcp://host:port")
    p.add_argument("--workers", type=int, default=None, help="start a LocalCluster of N workers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run into STORE: options not given are taken "
                        "from its record, options given must match it; finished chunks are "
                        "kept; with nothing at STORE yet, the run starts")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--shards", type=_pair, default=None,
                   help="write Zarr v3 shards of N or Y,X px (one object per shard, inner "
                        "chunks --chunk); the shard is the computation chunk and must be a "
                        "multiple of --chunk (default: no sharding)")

    p = sub.add_parser("label", help="objects of one class of a predict output, one global id "
                                     "each (writes 'instances' into the output)")
    p.add_argument("store", help="a finished predict output (Zarr path or URL)")
    p.add_argument("--class", dest="cls", default=None, metavar="NAME|INDEX",
                   help="class whose connected components are the objects: one of the "
                        "output's class names (cell) or an index (0). Default: the first class "
                        "whose name is not background-like (background, bg, membrane, "
                        "boundary, border, edge; cell for isbi2012-unet); class 1 where the "
                        "classes have no names (0, 1, ...)")
    p.add_argument("--threshold", type=float, default=None,
                   help="foreground = probabilities[class] >= THRESHOLD (default: labels == class)")
    p.add_argument("--connectivity", type=int, default=1, choices=(1, 2),
                   help="1: pixels touching by an edge, 2: also by a corner (1)")
    p.add_argument("--name", default="instances", help="array to write (instances)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier instances array")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted label run of --name with the same settings, "
                        "writing only the chunks it did not finish")
    p.add_argument("--method", default="components", choices=("components", "watershed"),
                   help="components: connected components of the class; watershed: seeds of "
                        "strict probability flooded over the boundary probability, which splits "
                        "objects a gap in their boundary joins (needs probabilities) (components)")
    p.add_argument("--seed-threshold", type=float, default=0.98,
                   help="watershed seeds: probabilities[class] >= this (0.98)")
    p.add_argument("--min-seed-size", type=int, default=10,
                   help="watershed: drop seeds of fewer pixels (10)")
    p.add_argument("--boundary-weight", type=float, default=10.0,
                   help="watershed: extra cost of entering a pixel of boundary probability 1 "
                        "(10)")
    p.add_argument("--max-cost", type=float, default=32.0,
                   help="watershed: largest path cost flooded; also the halo in px (32)")
    p.add_argument("--merge-threshold", type=float, default=None,
                   help="watershed: join touching fragments whose border's mean boundary "
                        "probability is below this (default: no merging); with --agglomeration "
                        "multicut|mutex, the probability where joining and cutting cost the same")
    p.add_argument("--seeds", default="threshold", choices=("threshold", "maxima", "both"),
                   help="watershed seeds: probability >= --seed-threshold, maxima of the "
                        "(capped) distance transform of probability >= 0.5, or both (threshold)")
    p.add_argument("--maxima-radius", type=int, default=4,
                   help="watershed maxima seeds: neighbourhood radius, px (4)")
    p.add_argument("--agglomeration", default="threshold",
                   choices=("threshold", "multicut", "mutex"),
                   help="watershed: how fragments are joined: threshold on the mean boundary "
                        "probability, multicut or mutex watershed (these two need "
                        "chunkseg[agglomerate]) (threshold)")
    _add_run_args(p)

    p = sub.add_parser("regions", help="region table (Parquet) of the objects of an output")
    p.add_argument("store", help="an output holding instances (Zarr path or URL)")
    p.add_argument("table", help="Parquet file to write")
    p.add_argument("--name", default="instances", help="instances array to measure (instances)")
    p.add_argument("--image", default=None,
                   help="the input image, for mean intensities (Zarr, TIFF, PNG...)")
    p.add_argument("--pixel-size", type=_floats, default=None,
                   help="pixel size Y,X (or one value) for physical areas and centroids")
    p.add_argument("--unit", default="micrometer", help="unit of --pixel-size (micrometer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table")
    p.add_argument("--no-shape", action="store_true",
                   help="leave out the shape columns (perimeter, eccentricity, solidity)")
    p.add_argument("--max-object-pixels", type=int, default=None,
                   help="largest bounding box, px, whose shape is measured (held in memory; "
                        "larger objects get NaN) (4194304)")
    _add_run_args(p)

    p = sub.add_parser("predict-instances",
                       help="run a per-tile instance model (labels per tile) and write one "
                            "seamless instances array, each object once")
    p.add_argument("image", help="input image: Zarr path/URL or a PNG/JPEG/TIFF file")
    p.add_argument("store", help="output Zarr group path or URL")
    p.add_argument("--model", required=True,
                   help="package.module:factory returning model(batch) -> (N, T, T) int ids")
    _add_grid_args(p)
    _add_planes_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    _add_run_args(p, workers=False)

    p = sub.add_parser("export-bioimageio",
                       help="write the shipped model as a bioimage.io model package (0.5)")
    p.add_argument("out", help="package folder (rdf.yaml inside) or a path ending in .zip")
    p.add_argument("--model", default="isbi2012-unet", help="built-in model (isbi2012-unet)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a package chunkseg wrote there before")

    p = sub.add_parser("figures", help="the patch figures of an output: overview, tile grid, "
                                       "per-tile predictions, reconstruction, seams (PNG)")
    p.add_argument("store", help="a finished predict output (Zarr path or URL)")
    p.add_argument("out_dir", help="folder for the PNGs")
    p.add_argument("--image", default=None,
                   help="the input image (drawn under the results; needed with --model)")
    p.add_argument("--model", default=None,
                   help="the output's model, for the per-tile predictions and the seams")
    p.add_argument("--class", dest="cls", default=None, metavar="NAME|INDEX",
                   help="class of the objects, a name (cell) or an index (0) (default: that "
                        "of instances, else the object class, as for label)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier PNGs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("evaluate", help="compare a prediction with ground truth, one chunk at "
                                        "a time: per-class IoU and Dice, mean IoU, accuracy")
    p.add_argument("pred", help="a predict output (its labels) or a label image: Zarr path/URL, "
                                "NGFF, TIFF, PNG or .npy")
    p.add_argument("gt", help="ground-truth label image (Zarr, NGFF, TIFF, PNG or .npy)")
    p.add_argument("--ignore", default=None,
                   help="ground-truth value(s) counted nowhere, e.g. 255 (comma-separated)")
    p.add_argument("--mask", default=None,
                   help="image of the same shape; only its nonzero pixels count")
    p.add_argument("--label-map", default=None,
                   help="stored ground-truth value -> class, e.g. 255:0,0:1 (ISBI 2012)")
    p.add_argument("--classes", default=None,
                   help="number of classes, or names comma-separated (default: the "
                        "prediction's class names, else the largest label + 1)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier --json file")
    p.add_argument("--pred-array", default=None,
                   help="variable of a predict output PRED, or array of a Zarr group (labels; "
                        "instances with --instances)")
    p.add_argument("--gt-array", default=None, help="array inside a ground-truth Zarr group")
    p.add_argument("--instances", action="store_true",
                   help="score objects instead of classes: ISBI 2012 V_rand and V_info, "
                        "adapted Rand error, VI split/merge, object precision/recall/F1")
    p.add_argument("--truth-class", default=None,
                   help="with --instances: GT value(s) of the objects, whose connected "
                        "components are the true objects, e.g. 255 (ISBI 2012); default: GT "
                        "holds object ids")
    p.add_argument("--no-thin", action="store_true",
                   help="with --instances: V_rand and V_info without the challenge's thinning")
    _add_run_args(p)

    p = sub.add_parser("seams", help="how tiling changes a model's output on an image that fits "
                                     "in memory: naive patches, crop-only and each blending "
                                     "window against the whole-image pass (table, PNG, JSON)")
    p.add_argument("image", help="input image (PNG/JPEG/TIFF, Zarr), read whole")
    p.add_argument("--model", required=True,
                   help="'isbi2012-unet', a TorchScript .pt, an .onnx, a bioimage.io rdf.yaml "
                        "or .zip, or package.module:factory")
    _add_grid_args(p, from_model=True)
    p.add_argument("--windows", default=None,
                   help="blending windows to compare, comma-separated (all: "
                        "uniform,linear,gaussian,cosine)")
    p.add_argument("--bins", type=_floats, default=None,
                   help="distance-to-tile-edge bin edges, px, from 0 (0,4,8,16,32)")
    p.add_argument("--multiple", type=_pair, default=None,
                   help="pad the reference's image to a multiple of this (the model's: 2**depth "
                        "for isbi2012-unet, else 1)")
    p.add_argument("--margin", type=_pair, default=None,
                   help="reflect padding around the reference's image, px (half the tile)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image accepted, H*W (4096*4096: the report runs in memory)")
    p.add_argument("--device", default="cpu", help="torch/ONNX device (cpu)")
    p.add_argument("--scale", type=float, default=None, help="input normalisation: x * scale")
    p.add_argument("--mean", type=_floats, default=None, help="... minus mean (per channel)")
    p.add_argument("--std", type=_floats, default=None, help="... divided by std (per channel)")
    p.add_argument("--array-name", default=None, help="array inside an input Zarr group")
    _add_planes_arg(p)
    p.add_argument("--out", default=".", help="folder for seam_report.png (.)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier PNG/JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = sub.add_parser("train", help="train a segmentation network on patches of big images, "
                                      "as a TOML/JSON config says")
    p.add_argument("config", help="training config (.toml or .json; see configs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in the config's out folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the config (repeatable; VALUE is TOML, e.g. "
                        "--set ema=0.999 --set model_options.base_channels=20 --set out=runs/wide; "
                        "paths relative to the current directory)")

    p = sub.add_parser("info", help="progress and settings of a predict output")
    p.add_argument("store", help="output Zarr store (path or URL)")

    p = sub.add_parser("demo", help="segment a mosaic of ISBI 2012 EM sections with the shipped U-Net")
    p.add_argument("--out", default="chunkseg-demo", help="output folder (chunkseg-demo)")
    p.add_argument("--rows", type=int, default=5, help="mosaic rows of 512 px sections (5)")
    p.add_argument("--cols", type=int, default=6, help="mosaic columns (6)")
    _add_grid_args(p, chunk_default=768)
    p.add_argument("--window", default="gaussian", help="blending window (gaussian)")
    p.add_argument("--scheduler", default=None, help="scheduler name or address")
    p.add_argument("--workers", type=int, default=None, help="start a LocalCluster of N workers")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's outputs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser
