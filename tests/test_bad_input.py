"""The bad-input matrix: each kind of mistake, through the API and through the CLI, gets a clear
error naming the parameter (and, where it is found before the run starts, nothing is written);
a mistake found only while the run writes (a late tile) leaves the output marked incomplete.

Through the CLI every error is one line on stderr and exit status 2; an internal bug keeps its
traceback (the CLI does not catch ``TypeError``/``ValueError`` wholesale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import zarr
from bad_models import late_image

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import (
    ChunksegError,
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
    ModelOutputError,
    ModelRunError,
    NotFoundError,
)

GOOD = late_image()  # (80, 90) uint8; the value 255 only in its last rows (see bad_models)
KW = dict(tile=32, overlap=8, chunks=48)
MODEL = "model_factories:numpy_two_class"

OPTION = {"tile": "--tile", "overlap": "--overlap", "window": "--window", "outputs": "--outputs",
          "dtype": "--dtype", "batch_size": "--batch-size", "chunks": "--chunk",
          "kernel": "--kernel", "mask": "--mask"}


@dataclass
class Case:
    exc: type | tuple
    match: str
    kwargs: dict = field(default_factory=dict)
    image: np.ndarray | None = None
    model: str = MODEL
    source: str | None = None  # a builder in SOURCES instead of an array
    late: bool = False  # found by a task while the run writes: output marked incomplete
    argparse: str | None = None  # the CLI refuses it while parsing: the option named


def _nan_image():
    image = GOOD.astype(np.float32)
    image[75, 85] = np.nan
    return image


CASES = {
    # the image
    "4-d plane stack": Case(InvalidValueError, "image", image=np.zeros((2, 3, 40, 40), np.uint8)),
    "empty array": Case(InvalidValueError, "image", image=np.zeros((0, 40), np.uint8)),
    "complex input": Case(InvalidTypeError, "dtype", image=GOOD.astype(np.complex64)),
    "NaN in the input": Case(InvalidValueError, "NaN or infinity.*y 75, x 85", image=_nan_image(),
                             late=True),
    "missing input": Case(NotFoundError, "image", source="missing"),
    "folder that is not a store": Case((NotFoundError, InvalidValueError), "image",
                                       source="plain"),
    "truncated first input chunk": Case(InputReadError, "truncated or corrupt",
                                        source="truncated_first"),
    "truncated late input chunk": Case(InputReadError, "truncated or corrupt",
                                       source="truncated_late", late=True),
    # the grid
    "tile zero": Case(InvalidValueError, "tile", {"tile": 0}),
    "tile float": Case(InvalidTypeError, "tile", {"tile": 32.0}, argparse="--tile"),
    "overlap >= tile": Case(InvalidValueError, "overlap", {"overlap": 32}),
    "overlap negative": Case(InvalidValueError, "overlap", {"overlap": -4}),
    "overlap float": Case(InvalidTypeError, "overlap", {"overlap": 8.5}, argparse="--overlap"),
    "chunks 0": Case(InvalidValueError, "chunks", {"chunks": 0}),
    "batch size 0": Case(InvalidValueError, "batch_size", {"batch_size": 0}),
    # the window, outputs, dtype and kernel
    "window wrong shape": Case(InvalidValueError, "shape", {"window": np.ones((5, 5))}),
    "window with zeros": Case(InvalidValueError, "window", {"window": np.zeros((32, 32))}),
    "window negative": Case(InvalidValueError, "window", {"window": -np.ones((32, 32))}),
    "unknown window": Case(InvalidValueError, "window", {"window": "hann"}),
    "unknown output": Case(InvalidValueError, "outputs", {"outputs": "logit"}),
    "unknown dtype": Case(InvalidValueError, "dtype", {"dtype": "int8"}, argparse="--dtype"),
    "unknown kernel": Case(InvalidValueError, "kernel", {"kernel": "cuda"}, argparse="--kernel"),
    # the mask and the normalisation
    "mask wrong shape": Case(InvalidValueError, "mask", {"mask": np.ones((200, 5), bool)}),
    "mask 3-d": Case(InvalidValueError, "mask", {"mask": np.ones((4, 4, 2), bool)}),
    "channels the normalisation does not take": Case(
        InvalidValueError, "mean", {"normalization": chunkseg.Normalization(
            mean=(0.1, 0.2), std=(1.0, 1.0))}, image=np.zeros((40, 40, 3), np.uint8)),
    # the model
    "unknown model spec": Case(InvalidValueError, "no_such_pkg", model="no_such_pkg.models:build"),
    "a .pt that is not a model": Case(InvalidValueError, "TorchScript", model="bad.pt"),
    "an .onnx that is not a model": Case(InvalidValueError, "ONNX", model="bad.onnx"),
    "model returns the wrong shape": Case(ModelOutputError, "shape", model="bad_models:wrong_shape"),
    "model returns complex values": Case(ModelOutputError, "dtype|complex",
                                         model="bad_models:complex_output"),
    "model returns a string": Case(ModelOutputError, "shape", model="bad_models:string_output"),
    "class count changes between batches": Case(
        ModelOutputError, "3 classes, but 2 were expected", model="bad_models:classes_change",
        late=True),
    "model returns NaN on a late tile": Case(ModelOutputError, "non-finite",
                                             model="bad_models:nan_late", late=True),
    "model raises on a late tile": Case(ModelRunError, "in chunk .*RuntimeError.*: the model "
                                        "failed on a late tile.*resume", late=True,
                                        model="bad_models:raises_late"),
}


def _write_zarr(path, image, chunk_files=None):
    dims = {2: ("y", "x"), 3: ("y", "x", "c")}.get(image.ndim)
    z = zarr.create_array(str(path), shape=image.shape, dtype=image.dtype,
                          chunks=(40, 40) + image.shape[2:], dimension_names=dims)
    if image.size:
        z[...] = image
    return path


def _truncate(path, key):
    chunk = path.joinpath("c", *key.split("/"))
    chunk.write_bytes(chunk.read_bytes()[:5])


def _source(case: Case, tmp_path, as_array: bool):
    """The input: the array itself (API) or a Zarr store holding it (CLI), or a special path."""
    if case.source == "missing":
        return str(tmp_path / "nope.zarr")
    if case.source == "plain":
        (tmp_path / "plain").mkdir()
        (tmp_path / "plain" / "x.txt").write_text("x")
        return str(tmp_path / "plain")
    image = GOOD if case.image is None else case.image
    if case.source and case.source.startswith("truncated"):
        path = _write_zarr(tmp_path / "in.zarr", image)
        _truncate(path, "0/0" if case.source == "truncated_first" else "1/2")
        return str(path)
    return image if as_array else str(_write_zarr(tmp_path / "in.zarr", image))


def _model(case: Case, tmp_path) -> str:
    if case.model in ("bad.pt", "bad.onnx"):
        path = tmp_path / case.model
        path.write_bytes(b"not a model file")
        return str(path)
    return case.model


def _argv(kwargs: dict, tmp_path) -> list[str]:
    argv = []
    for key, value in kwargs.items():
        if key == "normalization":
            argv += ["--mean", ",".join(map(str, value.mean)),
                     "--std", ",".join(map(str, value.std))]
            continue
        if isinstance(value, np.ndarray):
            np.save(tmp_path / f"{key}.npy", value)
            value = tmp_path / f"{key}.npy"
        argv += [f"{OPTION[key]}={value}"]
    return argv


def _assert_after(case: Case, out) -> None:
    if case.late:  # found while writing: the output exists, marked incomplete
        done, total = chunkseg.output_progress(str(out))
        assert done < total
        assert zarr.open_group(str(out), mode="r").attrs["complete"] is False
    else:
        assert not out.exists()


@pytest.mark.parametrize("name", list(CASES))
def test_api(tmp_path, name):
    case = CASES[name]
    out = tmp_path / "out.zarr"
    kwargs = {**KW, **case.kwargs}
    with pytest.raises(case.exc, match=case.match) as info:
        chunkseg.predict_to_zarr(_source(case, tmp_path, True), _model(case, tmp_path),
                                 str(out), scheduler="sync" if case.late else None, **kwargs)
    assert isinstance(info.value, ChunksegError)
    assert re.search(r"`\w+`", str(info.value)), "the message names the parameter in backticks"
    _assert_after(case, out)


@pytest.mark.parametrize("name", list(CASES))
def test_cli(tmp_path, capsys, name):
    case = CASES[name]
    out = tmp_path / "out.zarr"
    kwargs = {**KW, **case.kwargs}
    argv = ["predict", _source(case, tmp_path, False), str(out), "--model",
            _model(case, tmp_path), "--no-progress", *_argv(kwargs, tmp_path)]
    if case.late:
        argv += ["--scheduler", "sync"]
    if case.argparse:  # refused by argparse: its usage line, then one error line
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert case.argparse in capsys.readouterr().err.strip().splitlines()[-1]
    else:
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and err[0].startswith("chunkseg predict: error:"), err
        # the line names options (--batch-size) where the API names keywords (batch_size)
        assert re.search(case.match, err[0]) or re.search(case.match.replace("_", "-"),
                                                          err[0]), err[0]
    _assert_after(case, out)


def test_cases_cover_at_least_25_kinds():
    assert len(CASES) >= 25


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.float32, bool])
def test_other_input_dtypes_work(dtype):
    # values over each dtype's own range (beyond uint8, negative, fractional), which the model
    # must see as they are, in float32: MODEL is pointwise, (x / 255 - 0.5, 0.5 - x / 255)
    image = {np.uint16: GOOD.astype(np.uint16) * 257, np.int64: GOOD.astype(np.int64) - 128,
             np.float32: (GOOD.astype(np.float32) - 100) * 3.3, bool: GOOD > 128}[dtype]
    assert image.dtype == dtype
    ds = chunkseg.predict(image, MODEL, outputs="logits,labels", **KW)
    assert ds.labels.shape == GOOD.shape
    z = image.astype(np.float64) / 255 - 0.5  # exact in float32 for these integers, no ties
    np.testing.assert_allclose(ds.logits.values, np.stack([z, -z]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds.labels.values, (z < 0).astype(np.uint8))  # argmax


@pytest.mark.parametrize("bug", [TypeError("a bug"), ValueError("a bug"), KeyError("a bug")])
def test_cli_lets_internal_bugs_show_their_traceback(tmp_path, monkeypatch, bug):
    """An exception that is not chunkseg's own (a bug) propagates out of ``main``."""
    import chunkseg.engine

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(chunkseg.engine, "predict_to_zarr", broken)
    src = _write_zarr(tmp_path / "in.zarr", GOOD)
    with pytest.raises(type(bug), match="a bug"):
        main(["predict", str(src), str(tmp_path / "out.zarr"), "--model", MODEL])
