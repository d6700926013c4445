"""The bad-input matrix: each kind of mistake gets a clear error naming the parameter, before
anything is written (API), and one line with exit 2 (CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from model_factories import numpy_two_class

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import ModelOutputError

GOOD = np.random.default_rng(3).integers(0, 256, (80, 90)).astype(np.uint8)
KW = dict(tile=32, overlap=8)


def _model(batch):
    return numpy_two_class()(batch)


class ClassesChange:
    """2 classes on the first calls, 3 later (after the client's probe and the first block)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        out = numpy_two_class()(batch)
        return out if self.calls <= 2 else np.concatenate([out, out[:, :1]], axis=1)


CASES = {
    "3-d plane stack": (np.zeros((2, 3, 40, 40), np.uint8), {}, ValueError, "image"),
    "empty array": (np.zeros((0, 40), np.uint8), {}, ValueError, "image"),
    "tile zero": (GOOD, {"tile": 0}, ValueError, "tile"),
    "tile float": (GOOD, {"tile": 32.0}, TypeError, "tile"),
    "overlap >= tile": (GOOD, {"overlap": 32}, ValueError, "overlap"),
    "overlap negative": (GOOD, {"overlap": -4}, ValueError, "overlap"),
    "overlap float": (GOOD, {"overlap": 8.5}, TypeError, "overlap"),
    "window wrong shape": (GOOD, {"window": np.ones((5, 5))}, ValueError, "shape"),
    "window with zeros": (GOOD, {"window": np.zeros((32, 32))}, ValueError, "window"),
    "window negative": (GOOD, {"window": -np.ones((32, 32))}, ValueError, "window"),
    "unknown window": (GOOD, {"window": "hann"}, ValueError, "window"),
    "unknown output": (GOOD, {"outputs": "logit"}, ValueError, "outputs"),
    "unknown dtype": (GOOD, {"dtype": "int8"}, ValueError, "dtype"),
    "batch size 0": (GOOD, {"batch_size": 0}, ValueError, "batch_size"),
    "complex input": (GOOD.astype(np.complex64), {}, TypeError, "dtype"),
    "chunks 0": (GOOD, {"chunks": 0}, ValueError, "chunks"),
    "unknown kernel": (GOOD, {"kernel": "cuda"}, ValueError, "kernel"),
    "mask wrong shape": (GOOD, {"mask": np.ones((200, 5), bool)}, ValueError, "mask"),
    "mask 3-d": (GOOD, {"mask": np.ones((4, 4, 2), bool)}, ValueError, "mask"),
    "channels the model does not take": (
        np.zeros((40, 40, 3), np.uint8), {"normalization": chunkseg.Normalization(
            mean=(0.1, 0.2), std=(1.0, 1.0))}, ValueError, "mean"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_before_anything_is_written(tmp_path, name):
    image, kwargs, exc, match = CASES[name]
    out = tmp_path / "out.zarr"
    with pytest.raises(exc, match=match):
        chunkseg.predict_to_zarr(image, _model, str(out), **{**KW, **kwargs})
    assert not out.exists()


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.float32, bool])
def test_other_input_dtypes_work(tmp_path, dtype):
    image = (GOOD > 128) if dtype is bool else GOOD.astype(dtype)
    ds = chunkseg.predict(image, _model, outputs="labels", **KW)
    assert ds.labels.shape == GOOD.shape


def test_nan_input_is_reported_naming_the_chunk():
    image = GOOD.astype(np.float32)
    image[70, 80] = np.nan
    with pytest.raises(ModelOutputError, match="non-finite.*|in chunk"):
        chunkseg.predict(image, _model, chunks=48, outputs="logits", **KW).logits.compute()


@pytest.mark.parametrize("model, exc, match", [
    (lambda b: b[:, :, :10, :10], ModelOutputError, "shape"),
    (lambda b: np.zeros((len(b), 2, 32, 32), np.complex64), ModelOutputError, "dtype|complex"),
    (lambda b: "not an array", ModelOutputError, "shape"),
])
def test_bad_models_refused_before_writing(tmp_path, model, exc, match):
    out = tmp_path / "out.zarr"
    with pytest.raises(exc, match=match):
        chunkseg.predict_to_zarr(GOOD, model, str(out), **KW)
    assert not out.exists()


def test_class_count_changing_between_batches_is_reported(tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(ModelOutputError, match="3 classes, but 2 were expected"):
        chunkseg.predict_to_zarr(GOOD, ClassesChange(), str(out), chunks=48, scheduler="sync",
                                 **KW)
    assert chunkseg.output_progress(str(out))[0] < chunkseg.output_progress(str(out))[1]


def test_missing_input_directory_not_a_store_and_corrupt_chunk(tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(FileNotFoundError, match="image"):
        chunkseg.predict_to_zarr(str(tmp_path / "nope.zarr"), _model, str(out), **KW)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises((FileNotFoundError, ValueError), match="image"):
        chunkseg.predict_to_zarr(str(tmp_path / "plain"), _model, str(out), **KW)
    assert not out.exists()
    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=GOOD.shape, dtype="u1", chunks=(40, 40),
                          dimension_names=("y", "x"))
    z[...] = GOOD
    chunk = next(p for p in src.rglob("*") if p.is_file() and "c" in p.relative_to(src).parts)
    chunk.write_bytes(chunk.read_bytes()[:5])  # truncated
    with pytest.raises(Exception, match="(?i)zstd|decompress|corrupt|frame|size"):
        chunkseg.predict_to_zarr(str(src), _model, str(out), **KW)


def test_unknown_model_spec_and_a_pt_that_is_not_a_model(tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises((ValueError, ImportError, ModuleNotFoundError), match="model|module"):
        chunkseg.predict_to_zarr(GOOD, "no_such_pkg.models:build", str(out), **KW)
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a torchscript archive")
    with pytest.raises(Exception, match="(?i)model|archive|zip|file"):
        chunkseg.predict_to_zarr(GOOD, str(bad), str(out), **KW)
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--tile", "0"], "tile"),
    (["--overlap", "40"], "overlap"),
    (["--window", "hann"], "window"),
    (["--outputs", "logit"], "outputs"),
    (["--batch-size", "0"], "batch_size"),
    (["--chunk", "0"], "chunks"),
    (["--model", "no_such_pkg.models:build"], "no_such_pkg"),
])
def test_cli_one_line_and_exit_2(tmp_path, capsys, argv, message):
    src = tmp_path / "in.npy"
    np.save(src, GOOD)
    img = tmp_path / "in.zarr"
    chunkseg.ingest(GOOD, str(img))
    base = ["predict", str(img), str(tmp_path / "out.zarr"), "--model",
            "model_factories:numpy_two_class", "--tile", "32", "--overlap", "8", "--no-progress"]
    code = main(base + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("chunkseg predict: error:")
    assert message in err[0]
    assert not (tmp_path / "out.zarr").exists()
