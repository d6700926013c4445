"""Command-line interface: ``chunkseg ingest | plan | predict | predict-instances | label |
regions | figures | info | demo | export-bioimageio | train | evaluate | seams``.

:func:`main` runs one command (the ``_cmd_*`` functions here) on the arguments that
:func:`chunkseg._cli_parser.build_parser` reads, and turns chunkseg's errors into one line on
stderr and exit status 2."""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from ._check import parse_classes, parse_ignore, parse_label_map
from ._cli_parser import build_parser, option_flags
from .errors import ChunksegError, InvalidValueError
from .outputs._target import check_output_files

__all__ = ["main", "build_parser"]


def _window_arg(text: str):
    import os

    from .kernels.windows import WINDOWS

    if text.endswith(".npy"):
        from .io._files import _read_npy

        return _read_npy(text, "window")
    if text not in WINDOWS and os.path.isfile(text):
        raise InvalidValueError(
            f"`window` must be one of {sorted(WINDOWS)} or a .npy file of weights. Got the file "
            f"{text!r}; save the weights with `numpy.save('window.npy', weights)`.")
    return text


def _mask_arg(path: str | None):
    if path is None:
        return None
    from .io import IMAGE_FILE_SUFFIXES, is_zarr_url_or_path
    from .io._files import _read_npy

    if path.endswith(".npy"):
        return _read_npy(path, "mask")
    if not path.lower().endswith(IMAGE_FILE_SUFFIXES) and not is_zarr_url_or_path(path):
        raise InvalidValueError(
            f"`mask` must be a .npy file, a {'/'.join(IMAGE_FILE_SUFFIXES)} image or a Zarr "
            f"store. Got {path!r}; save the mask with `numpy.save('mask.npy', mask)`.")
    from .io import open_image

    return open_image(path).data[..., 0].compute()  # a thumbnail: small by definition


def _normalization(args):
    if args.scale is None and args.mean is None and args.std is None:
        return None
    from .models.spec import Normalization

    return Normalization(scale=1.0 if args.scale is None else args.scale,
                         mean=args.mean or (0.0,), std=args.std or (1.0,))


def _cmd_ingest(args) -> int:
    from ._ingest import ingest

    group = ingest(args.source, args.store, chunks=args.chunk, overwrite=args.overwrite,
                   array_name=args.array_name, isel=args.planes,
                   progress=not args.no_progress, levels=args.levels)
    arr = group["0"]
    ms = group.attrs["ome"]["multiscales"][0]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"][1:]
    unit = ms["axes"][1].get("unit", "px")
    print(f"wrote {args.store}: OME-NGFF image, shape {arr.shape} (c, y, x), dtype {arr.dtype}, "
          f"chunks {arr.chunks}, {len(ms['datasets'])} level(s), pixel size "
          f"{scale[0]:g} x {scale[1]:g} {unit} (y x)")
    return 0


def _cmd_plan(args) -> int:
    from .plan import plan_tiles

    shape_text = args.image.lower().replace(",", "x")
    if all(p.isdigit() for p in shape_text.split("x")) and 2 <= len(shape_text.split("x")) <= 3:
        shape = tuple(int(p) for p in shape_text.split("x"))
        itemsize = 1
    else:
        from .io import open_image

        arr = open_image(args.image, isel=args.planes, stack=True)
        shape, itemsize = arr.shape[-3:], arr.dtype.itemsize  # each plane of a stack
        if arr.ndim > 3 and not args.json:
            print("planes    " + " x ".join(f"{d} {n}" for d, n in zip(arr.dims[:-3], arr.shape))
                  + f" = {math.prod(arr.shape[:-3])}, each planned as below")
    plan = plan_tiles(shape, args.tile, args.overlap, args.chunk)
    if args.json:
        d = plan.to_dict()
        d["memory_per_task_bytes"] = plan.memory_per_task(args.classes, args.batch_size, itemsize)
        print(json.dumps(d, indent=2))
    else:
        print(plan.summary(args.classes, args.batch_size, itemsize))
    return 0


#: ``chunkseg predict`` options whose value a resumed run takes from the output's record
#: when they are not given (dest -> the keyword of :func:`chunkseg.predict_to_zarr`).
_RECORDED = {"model": "model", "tile": "tile", "overlap": "overlap", "window": "window",
             "chunk": "chunks", "shards": "shards", "batch_size": "batch_size",
             "outputs": "outputs", "dtype": "dtype", "device": "device", "kernel": "kernel",
             "tta": "tta", "classes": "classes", "ome": "ome", "levels": "levels",
             "planes": "isel"}


def _given(args, dest: str) -> bool:
    """Whether option ``dest`` was on the command line (not its default)."""
    argv = getattr(args, "argv", None) or []
    flag = "--" + dest.replace("_", "-")
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _resumed_settings(args) -> dict:
    """The settings of ``chunkseg predict``: the options given, and with ``--resume`` the
    output's recorded settings for the others (a given option must match the record: the
    fingerprint check says so)."""
    from .outputs._manifest import recorded_settings

    settings = {kw: getattr(args, dest) for dest, kw in _RECORDED.items()}
    settings["normalization"] = _normalization(args)
    recorded = recorded_settings(args.store) if args.resume else None
    if recorded:
        for dest, kw in _RECORDED.items():
            if not _given(args, dest) and kw in recorded:
                settings[kw] = recorded[kw]
        if settings["normalization"] is None:
            settings["normalization"] = recorded.get("normalization")
        if recorded.get("mask") and args.mask is None:
            raise InvalidValueError(
                f"`--mask` must be given again to resume {args.store!r}: its run skipped "
                "tiles by a mask, which the output does not hold. Pass the same --mask.")
    if settings["model"] is None:
        raise InvalidValueError(
            "`--model` is required" + (
                f": {args.store!r} records no model that can be loaded again (it ran a model "
                "object in memory)" if recorded else "") + ". Pass --model "
            "(isbi2012-unet, a .pt/.onnx/.keras file, an rdf.yaml or package.module:factory).")
    return settings


def _cmd_predict(args) -> int:
    from .engine import predict_to_zarr

    settings = _resumed_settings(args)
    window = settings.pop("window")
    ds = predict_to_zarr(
        args.image, settings.pop("model"), args.store,
        window=_window_arg(window) if isinstance(window, str) else window,
        array_name=args.array_name, mask=_mask_arg(args.mask),
        scheduler=args.scheduler, workers=args.workers,
        progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume,
        labels_into_source=args.labels_into_source, **settings,
    )
    names = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in ds.data_vars.items())
    print(f"wrote {args.store}: {names}")
    return 0


def _cmd_train(args) -> int:
    from .training.config import TrainConfig
    from .training.train import train

    config = TrainConfig.from_file(args.config, overrides=args.overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress)
    best = ", ".join(f"{k} {v:.4f}" for k, v in result.best.items()
                     if k.startswith("val_") and isinstance(v, float))
    print(f"wrote {result.out}: " + ", ".join(sorted(p.name for p in result.files.values())))
    if best:
        print(f"best epoch {result.best['epoch']}: {best}")
    return 0


def _cmd_export_bioimageio(args) -> int:
    from .training.export import export_bioimageio

    path = export_bioimageio(args.out, model=args.model, overwrite=args.overwrite)
    print(f"wrote {path} (run it: chunkseg predict IMAGE OUT.zarr --model {path})")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluation.report import format_report, to_json
    from .evaluation.semantic import evaluate

    if args.json_out is not None:  # before anything is read: never an input, never unasked
        check_output_files([args.json_out], overwrite=args.overwrite,
                           sources=(args.pred, args.gt, args.mask))
    if args.instances:
        result = _evaluate_instances(args)
    else:
        if args.truth_class is not None or args.no_thin:
            raise InvalidValueError("`--truth-class` and `--no-thin` must come with "
                                    "`--instances`. Add --instances, or drop them.")
        result = evaluate(
            args.pred, args.gt, classes=parse_classes(args.classes),
            ignore=parse_ignore(args.ignore), mask=args.mask,
            pred_variable=args.pred_array or "labels", truth_array=args.gt_array,
            label_map=None if args.label_map is None else parse_label_map(args.label_map),
            scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress)
        print(format_report(result))
    if args.json_out is not None:
        from .outputs._lifecycle import replacing

        with replacing(args.json_out) as part, open(part, "w") as f:
            json.dump(to_json(result), f, indent=2)
        print(f"wrote {args.json_out}")
    return 0


def _evaluate_instances(args) -> dict:
    from .evaluation.instances import evaluate_instances, format_instance_report

    if args.label_map is not None or args.classes is not None:
        raise InvalidValueError("`--label-map` and `--classes` are for class scores; with "
                                "`--instances` pass the GT's object value with --truth-class "
                                "(e.g. 255).")
    result = evaluate_instances(
        args.pred, args.gt, truth_class=parse_ignore(args.truth_class, "--truth-class"),
        ignore=parse_ignore(args.ignore), mask=args.mask,
        pred_variable=args.pred_array or "instances", truth_array=args.gt_array,
        thin=not args.no_thin, scheduler=args.scheduler, workers=args.workers,
        progress=not args.no_progress)
    print(format_instance_report(result))
    return result


def _cmd_seams(args) -> int:
    from .evaluation import seams
    from .viz import save_seam_report

    seams.seam_report_paths(args.out, json_path=args.json_out, overwrite=args.overwrite,
                            sources=(args.image,))
    report = seams.seam_report(
        args.image, args.model, tile=args.tile, overlap=args.overlap, windows=args.windows,
        bins=args.bins, normalization=_normalization(args), multiple=args.multiple,
        margin=args.margin, batch_size=args.batch_size, device=args.device, chunks=args.chunk,
        max_pixels=seams.MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        array_name=args.array_name, isel=args.planes, progress=not args.no_progress)
    print(seams.format_seam_table(report))
    paths = save_seam_report(report, args.out, json_path=args.json_out, overwrite=args.overwrite)
    for name, path in paths.items():
        print(f"wrote {name:<7}{path}")
    return 0


def _cmd_info(args) -> int:
    from .outputs._manifest import open_output_group
    from .outputs._target import describe_location
    from .outputs.api import output_progress

    # one way to open an output: a store that is none, or whose metadata was changed, is a
    # NotAnOutputError; an unreachable one an InputReadError (a URL with a password first)
    done, total = output_progress(args.store)
    group = open_output_group(args.store)
    attrs = group.attrs.asdict()
    _check_info_attrs(attrs, describe_location(args.store))
    complete = group.attrs.get("complete") is True
    print(f"store      {describe_location(args.store)}")
    print(f"complete   {'yes' if complete else 'no'}: {done} of {total} chunks written"
          + ("" if complete else "  (finish with: chunkseg predict ... --resume)"))
    fp = dict(group.attrs.get("fingerprint") or {})
    for key in ("source", "image_shape", "tile", "overlap", "chunks", "shards", "zarr_chunks",
                "window", "outputs", "dtype", "classes"):
        if key in fp:
            print(f"{key:<10} {fp[key]}")
    return 0


def _int_list(value, lengths: tuple[int, ...]) -> bool:
    return (isinstance(value, list) and len(value) in lengths
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _check_info_attrs(attrs: dict, where: str) -> None:
    """Refuse an output whose attributes ``chunkseg info`` reads are not of the types
    predict_to_zarr writes (edited by hand, or another program's)."""
    fp = attrs.get("fingerprint", {})
    problems = []
    if not isinstance(fp, dict):
        problems.append(f"'fingerprint' is {fp!r}, not a mapping")
        fp = {}
    if "complete" in attrs and not isinstance(attrs["complete"], bool):
        problems.append(f"'complete' is {attrs['complete']!r}, not true or false")
    for prefix, d in (("", attrs), ("fingerprint.", fp)):
        for key, lengths in (("tile", (2,)), ("overlap", (2,)), ("stride", (2,)),
                             ("chunks", (2,)), ("shards", (2,)), ("zarr_chunks", (2,)),
                             ("image_shape", (2, 3))):
            if key in d and not _int_list(d[key], lengths):
                problems.append(f"'{prefix}{key}' is {d[key]!r}, not a list of "
                                f"{' or '.join(map(str, lengths))} ints")
        if "classes" in d and (not isinstance(d["classes"], int)
                               or isinstance(d["classes"], bool)):
            problems.append(f"'{prefix}classes' is {d['classes']!r}, not an int")
    if problems:
        raise InvalidValueError(
            f"`store` must hold the metadata chunkseg predict wrote. Got {where!r}, whose "
            f"attributes were changed: {'; '.join(problems)}. Run chunkseg predict again with "
            "--overwrite."
        )


def _cmd_label(args) -> int:
    from .objects.instances import label

    ids = label(args.store, cls=args.cls, threshold=args.threshold,
                    connectivity=args.connectivity, name=args.name, overwrite=args.overwrite,
                    resume=args.resume, method=args.method, seed_threshold=args.seed_threshold,
                    min_seed_size=args.min_seed_size, boundary_weight=args.boundary_weight,
                    max_cost=args.max_cost, merge_threshold=args.merge_threshold,
                    agglomeration=args.agglomeration, seeds=args.seeds,
                    maxima_radius=args.maxima_radius,
                    scheduler=args.scheduler, workers=args.workers,
                    progress=not args.no_progress)
    print(f"wrote {args.name} {tuple(ids.shape)} {ids.dtype} into {args.store}: "
          f"{ids.attrs['objects']} objects of class {ids.attrs['class']}")
    return 0


def _cmd_predict_instances(args) -> int:
    from .objects.tile_instances import predict_instances

    ids = predict_instances(args.image, args.model, args.store, tile=args.tile,
                            overlap=args.overlap, chunks=args.chunk, batch_size=args.batch_size,
                            overwrite=args.overwrite, scheduler=args.scheduler,
                            progress=not args.no_progress, isel=args.planes)
    print(f"wrote instances {tuple(ids.shape)} {ids.dtype} into {args.store}: "
          f"{ids.attrs['n_objects']} objects")
    return 0


def _cmd_figures(args) -> int:
    from .viz import figures

    if args.model is not None and args.image is None:
        raise InvalidValueError("`--model` needs `--image` (the input the model runs on). Got --model "
                       f"{args.model!r} without --image; add --image IN.")
    paths = figures(args.store, args.out_dir, image=args.image, model=args.model, cls=args.cls,
                    overwrite=args.overwrite, progress=not args.no_progress)
    for name, path in paths.items():
        print(f"{name:<17}{path}")
    return 0


def _cmd_regions(args) -> int:
    from .objects.regions import MAX_OBJECT_PIXELS, regions

    size = args.pixel_size
    table = regions(args.store, args.table, name=args.name, image=args.image,
                    pixel_size=None if size is None else (size if len(size) > 1 else size[0]),
                    unit=args.unit, overwrite=args.overwrite, shape=not args.no_shape,
                    max_object_pixels=(MAX_OBJECT_PIXELS if args.max_object_pixels is None
                                       else args.max_object_pixels),
                    scheduler=args.scheduler,
                    workers=args.workers, progress=not args.no_progress)
    print(f"wrote {args.table}: {len(table)} objects, columns {', '.join(table.columns)}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(
        args.out, rows=args.rows, cols=args.cols, tile=args.tile, overlap=args.overlap,
        chunks=args.chunk, window=args.window, batch_size=args.batch_size,
        scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    plan = result["plan"]
    print(f"input mosaic     {result['mosaic']}  ({plan['image_shape'][0]} x "
          f"{plan['image_shape'][1]} px)")
    print(f"segmentation     {result['segmentation']}  (logits, probabilities, labels, "
          "instances)")
    print(f"figure           {result['figure']}")
    print(f"patch figures    {result['figures']}/  ({', '.join(result['patch_figures'])})")
    print(f"regions          {result['regions']}  ({result['cells']} cells, median area "
          f"{result['median_cell_area_nm2'] / 1e6:.3f} um^2)")
    print(f"{plan['n_tiles']} tiles in {plan['n_chunks']} chunks, predicted and written in "
          f"{result['seconds']:.1f} s; membrane fraction {result['membrane_fraction']:.3f}")
    print(f"open it:  python -c \"import xarray as xr; print(xr.open_zarr('{result['segmentation']}'))\"")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chunkseg`` command.

    Returns
    -------
    int
        The exit status: 0; 2 after an error (one line on stderr); 130 after Ctrl-C, 143 after
        SIGTERM (one line: what was interrupted and, for ``predict``, how to finish it).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.version:
        from ._version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"ingest": _cmd_ingest, "plan": _cmd_plan, "predict": _cmd_predict,
               "info": _cmd_info, "demo": _cmd_demo, "label": _cmd_label,
               "regions": _cmd_regions, "predict-instances": _cmd_predict_instances, "figures": _cmd_figures,
               "export-bioimageio": _cmd_export_bioimageio, "train": _cmd_train, "seams": _cmd_seams,
               "evaluate": _cmd_evaluate}[args.command]
    # SIGTERM (a scheduler's or `kill`'s) stops a run as Ctrl-C does; signal handlers can
    # only be set in the main thread
    catch = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if catch else None
    try:
        return handler(args)
    except ChunksegError as e:
        # chunkseg's own errors are one line: bad input, model output, output targets,
        # interrupted runs, and the machine's failures chunkseg names where they happen (a
        # store that cannot be read or written, a scheduler that cannot be reached). Anything
        # else, an OSError from deep inside a library included, is a bug: its traceback shows.
        line = _one_line(e, lambda text: _cli_terms(text, parser, args.command))
        print(f"chunkseg {args.command}: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (_Terminated)
        print(f"chunkseg {args.command}: error: {_interrupted(args, e)}", file=sys.stderr)
        return 128 + int(signal.SIGTERM if isinstance(e, _Terminated) else signal.SIGINT)
    finally:
        if catch:  # None: the handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the handler :func:`main` installs: it stops a
    run as Ctrl-C does (``except Exception`` does not catch it)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _interrupted(args, error: KeyboardInterrupt) -> str:
    """The one line for an interrupted command: the signal, and for ``predict`` how many
    chunks its output holds and how to finish it."""
    what = "SIGTERM" if isinstance(error, _Terminated) else "Ctrl-C (SIGINT)"
    line = f"interrupted by {what}"
    if args.command == "train":
        return f"{line}; continue the run with --resume."
    if args.command != "predict":
        return f"{line}."
    from .outputs._target import describe_location
    from .outputs.api import output_progress

    where = describe_location(args.store)
    try:
        done, total = output_progress(args.store)
    except (ChunksegError, OSError, KeyError, ValueError, TypeError):
        return f"{line} before the output {where!r} was set up; run the command again."
    return (f"{line}: {done} of {total} chunks are written and marked in {where!r}, which "
            "stays marked incomplete; finish it with the same command and --resume.")


def _one_line(error: BaseException, terms: Callable[[str], str] | None = None) -> str:
    from ._redact import redact_text

    text = " ".join(str(error).split())
    if terms is not None:
        text = terms(text)
    # the last guard: no URL credentials or query in the line, whatever the error says
    return redact_text(text) or type(error).__name__


#: chunkseg's functions that error messages name -> the command that runs them.
_API_COMMANDS = {"predict_to_zarr": "predict", "chunkseg.predict_to_zarr": "predict",
                 "chunkseg.label": "label", "chunkseg.instances": "label",
                 "chunkseg.regions": "regions", "chunkseg.predict_instances": "predict-instances"}
#: keywords of chunkseg's functions whose option has another name (keyword -> option dest).
_KEYWORD_DEST = {kw: dest for dest, kw in _RECORDED.items() if kw != dest} | {
    "json_path": "json_out"}
_API_CALL = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(_API_COMMANDS, key=len, reverse=True))
    + r")(?:\(\.\.\.,\s*([^()]*)\))?(?!\w|\.\w)")
_KEYWORD_VALUE = re.compile(
    r"(?P<q>`?)(?<![\w.-])(?P<name>[A-Za-z_]\w*)=(?P<value>True|'[^']*'|\"[^\"]*\""
    r"|\(-?\d+, -?\d+\)|-?\d+(?:\.\d+)?)?(?P=q)(?![\w(])")
_KEYWORD = re.compile(r"`(?P<name>[A-Za-z_]\w*)`")
_ASIDE = re.compile(r"\s*\(CLI:?\s*([^()]*)\)")


def _cli_terms(text: str, parser, command: str) -> str:
    """An error message of chunkseg's Python API in the terms of the ``chunkseg`` command
    ``command``: its keywords become the command's options, as ``parser`` (that of
    :func:`build_parser`) defines them (:func:`chunkseg._cli_parser.option_flags`).

    ``overwrite=True`` -> ``--overwrite``; ``tile=(64, 64)`` -> ``--tile 64,64``;
    ``dtype='float32'`` -> ``--dtype float32``; `` `tile` `` -> `` `--tile` ``;
    ``predict_to_zarr(..., resume=True)`` -> ``chunkseg predict ... --resume``. A keyword that is
    not an option of ``command`` keeps its Python form, except an on/off keyword set to True
    that is a switch of another command (``resume=True`` in ``chunkseg label`` ->
    ``--resume``). The messages' "(CLI: ...)" asides are dropped where the message names their
    options (or their text) already, else kept without "CLI:" (``Use 'cpu' (--device cpu)``).
    The Python API's messages stay as they are: only the command's line is translated.
    """
    tables = {name: option_flags(parser, name) for name in {command, *_API_COMMANDS.values()}}
    switches = {}
    for name in parser.commands.choices if getattr(parser, "commands", None) else ():
        switches.update({d: f for d, (f, on) in option_flags(parser, name).items() if on})

    def flag_of(name: str, flags: dict) -> tuple[str | None, bool]:
        return flags.get(_KEYWORD_DEST.get(name, name), (None, False))

    def keyword(match: re.Match, flags: dict) -> str:
        q, name, value = match["q"], match["name"], match["value"]
        flag, switch = flag_of(name, flags)
        if flag is None and value == "True" and name in switches:
            flag, switch = switches[name], True
        if flag is None or (value is None and not q) or (
                value is not None and switch != (value == "True")):
            return match[0]  # not an option, or a value the option does not take
        if value is None or value == "True":  # `array_name=`, overwrite=True
            return f"{q}{flag}{q}"
        value = value.strip("'\"")
        if value.startswith("("):
            value = value.strip("()").replace(" ", "")
        return f"{q}{flag} {value}{q}"

    def call(match: re.Match) -> str:
        name = _API_COMMANDS[match[1]]
        if match[2] is None:
            return f"chunkseg {name}"
        return f"chunkseg {name} ... " + _KEYWORD_VALUE.sub(
            lambda m: keyword(m, tables[name]), match[2])

    flags = tables[command]
    text = _API_CALL.sub(call, text)
    text = _KEYWORD_VALUE.sub(lambda m: keyword(m, flags), text)
    text = _KEYWORD.sub(lambda m: f"`{flag_of(m['name'], flags)[0] or m['name']}`", text)
    rest = _ASIDE.sub("", text)

    def aside(match: re.Match) -> str:
        named = re.findall(r"--[\w-]+", match[1])
        said = [re.search(re.escape(f) + r"(?![\w-])", rest) for f in named]
        if match[1].strip(" `") in rest or (named and all(said)):
            return ""  # redundant: the message says it in the command's terms already
        return f" ({match[1].strip()})"

    return _ASIDE.sub(aside, text)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
