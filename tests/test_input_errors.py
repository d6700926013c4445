"""User mistakes on the input side (issue 19, items 8 and 9): each is one chunkseg error naming
the parameter, the value and the fix, raised before anything is written; through the CLI it is
one line on stderr and exit status 2.

The devices, the model files, the input stores and files, the ``--window``/``--mask`` files and
the image layouts. The object-store ones (a missing bucket, access refused) are in
``test_s3.py``, beside its S3 server; the CLI for a bioimage.io package with missing weights is
in ``test_bioimageio.py``, beside its exported package.
"""

from __future__ import annotations

import struct
import zipfile
import zlib

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import (
    ChunksegError,
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
)

torch = pytest.importorskip("torch")

MODEL = "model_factories:numpy_two_class"
KW = dict(tile=32, overlap=8, chunks=48)
CLI_KW = ["--tile=32", "--overlap=8", "--chunk=48", "--no-progress"]
IMAGE = (np.arange(64 * 70) % 251).astype(np.uint8).reshape(64, 70)


def _store(path, image=IMAGE, dims=("y", "x")):
    z = zarr.create_array(str(path), shape=image.shape, dtype=image.dtype, chunks=image.shape,
                          dimension_names=dims)
    z[...] = image
    return str(path)


def _api(exc, match, tmp_path, image, model=MODEL, **kwargs):
    """predict_to_zarr refuses with ``exc`` matching ``match``; no output is written."""
    out = tmp_path / "out.zarr"
    with pytest.raises(exc, match=match) as info:
        chunkseg.predict_to_zarr(image, model, str(out), **{**KW, **kwargs})
    assert isinstance(info.value, ChunksegError)
    assert not out.exists()
    return str(info.value)


def _cli(argv, capsys, tmp_path, command="predict") -> str:
    """``chunkseg <argv>`` exits 2 with one error line; no output is written."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"chunkseg {command}: error:"), err
    assert not (tmp_path / "out.zarr").exists()
    return err[0]


def _predict_argv(image, tmp_path, model=MODEL, *extra):
    return ["predict", str(image), str(tmp_path / "out.zarr"), "--model", str(model),
            *CLI_KW, *extra]


# --- 1. the device --------------------------------------------------------------------------

def _absent(device: str) -> bool:
    """Whether ``device`` is a device this machine lacks (or no device at all)."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return index >= torch.cuda.device_count()
    if device == "mps":
        return not torch.backends.mps.is_available()
    return True


DEVICES = [pytest.param(d, marks=pytest.mark.skipif(not _absent(d), reason=f"has {d}"))
           for d in ("banana", "cuda", "cuda:1", "mps", "")]


def _torchscript(tmp_path) -> str:
    path = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(1, 2, 1)).save(str(path))
    return str(path)


def _device_message(text: str, device: str, name: str = "`device`") -> None:
    assert name in text and repr(device) in text
    assert f"{torch.cuda.device_count()} CUDA GPUs (torch.cuda.device_count())" in text
    assert "use 'cpu'" in text


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["isbi2012-unet", "torchscript", "module", "factory"])
def test_device_refused_api(tmp_path, device, model):
    model = {"torchscript": lambda: _torchscript(tmp_path),
             "module": lambda: torch.nn.Conv2d(1, 2, 1),
             "factory": lambda: "model_factories:torch_conv1x1"}.get(model, lambda: model)()
    image = np.zeros((40, 40, 3), np.uint8) if model == "model_factories:torch_conv1x1" else IMAGE
    text = _api(InvalidValueError, "`device`", tmp_path, image, model=model, device=device)
    _device_message(text, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["isbi2012-unet", "torchscript"])
def test_device_refused_cli(tmp_path, capsys, device, model):
    model = _torchscript(tmp_path) if model == "torchscript" else model
    text = _cli(_predict_argv(_store(tmp_path / "in.zarr"), tmp_path, model,
                              f"--device={device}"), capsys, tmp_path)
    _device_message(text, device, "`--device`")  # the line names the option


def _onnx(tmp_path) -> str:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "conv1x1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        initializer=[numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w"),
                     numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "conv.onnx"
    onnx.save(proto, str(path))
    return str(path)


def _onnx_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


ONNX_DEVICES = {"banana": "'cpu', 'cuda' or 'cuda:N'", "": "'cpu', 'cuda' or 'cuda:N'",
                "cuda": "no CUDAExecutionProvider", "cuda:1": "no CUDAExecutionProvider"}


@pytest.mark.parametrize("device", list(ONNX_DEVICES))
def test_onnx_device_refused(tmp_path, capsys, device):
    if device.startswith("cuda") and _onnx_has_cuda():
        pytest.skip("this onnxruntime has CUDA")
    model = _onnx(tmp_path)
    text = _api(InvalidValueError, "`device`", tmp_path, IMAGE, model=model, device=device)
    assert ONNX_DEVICES[device] in text and repr(device) in text
    text = _cli(_predict_argv(_store(tmp_path / "in.zarr"), tmp_path, model,
                              f"--device={device}"), capsys, tmp_path)
    assert ONNX_DEVICES[device] in text


def test_onnx_on_cpu_still_runs(tmp_path):
    ds = chunkseg.predict(IMAGE, _onnx(tmp_path), device="cpu", outputs="logits", **KW)
    np.testing.assert_allclose(ds.logits.values[0], IMAGE, rtol=1e-6)


# --- 2. a bioimage.io package that cannot be read -------------------------------------------

PACKAGES = {
    "not YAML": ("rdf.yaml", b"{{{ not yaml: [", "YAML mapping"),
    "YAML, not a mapping": ("rdf.yaml", b"- just\n- a list\n", "YAML mapping"),
    "empty rdf.yaml": ("rdf.yaml", b"", "YAML mapping"),
    "YAML, not a model": ("rdf.yaml", b"type: dataset\nformat_version: 0.3.0\nname: a dataset\n"
                          b"description: not a model\nauthors:\n  - name: someone\n"
                          b"license: CC-BY-4.0\n", "must describe a model"),
    "garbage .zip": ("pkg.zip", b"garbage, not a zip archive", "not a zip archive"),
    "zip without rdf.yaml": ("pkg.zip", None, "YAML mapping"),
}


def _package(tmp_path, name) -> str:
    filename, content, _ = PACKAGES[name]
    path = tmp_path / "pkg" / filename
    path.parent.mkdir()
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "no description here")
    else:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("name", list(PACKAGES))
def test_bad_bioimageio_package_api(tmp_path, name):
    pytest.importorskip("bioimageio.spec")
    path = _package(tmp_path, name)
    text = _api(InvalidValueError, PACKAGES[name][2], tmp_path, IMAGE, model=path)
    assert "`model`" in text and path in text


@pytest.mark.parametrize("name", list(PACKAGES))
def test_bad_bioimageio_package_cli(tmp_path, capsys, name):
    pytest.importorskip("bioimageio.spec")
    path = _package(tmp_path, name)
    text = _cli(_predict_argv(_store(tmp_path / "in.zarr"), tmp_path, path), capsys, tmp_path)
    assert PACKAGES[name][2] in text and path in text


# --- 3. an input store whose zarr.json cannot be read ---------------------------------------

ZARR_JSON = {"0 bytes": b"", "invalid JSON": b'{"zarr_format": 3, "node_type": '}


def _broken_store(tmp_path, content) -> str:
    store = tmp_path / "in.zarr"
    _store(store)
    (store / "zarr.json").write_bytes(content)
    return str(store)


@pytest.mark.parametrize("name", list(ZARR_JSON))
def test_unreadable_zarr_json_api(tmp_path, name):
    store = _broken_store(tmp_path, ZARR_JSON[name])
    text = _api(InputReadError, "readable Zarr metadata", tmp_path, store)
    assert store in text and "chunkseg ingest" in text
    with pytest.raises(InputReadError, match="JSONDecodeError"):
        chunkseg.open_image(store)


@pytest.mark.parametrize("name", list(ZARR_JSON))
def test_unreadable_zarr_json_cli(tmp_path, capsys, name):
    store = _broken_store(tmp_path, ZARR_JSON[name])
    text = _cli(_predict_argv(store, tmp_path), capsys, tmp_path)
    assert "`image`" in text and store in text


# --- 4. --window and --mask files that are not .npy arrays ----------------------------------

def _npy_files(tmp_path) -> dict[str, str]:
    text = tmp_path / "weights.txt"
    text.write_text("1 2 3")
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY not really")
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.ones((32, 32), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:200])
    return {"not .npy": str(text), "garbage .npy": str(garbage),
            "truncated .npy": str(truncated)}


@pytest.mark.parametrize("option", ["window", "mask"])
@pytest.mark.parametrize("kind", ["not .npy", "garbage .npy", "truncated .npy"])
def test_window_and_mask_files_cli(tmp_path, capsys, option, kind):
    path = _npy_files(tmp_path)[kind]
    text = _cli(_predict_argv(_store(tmp_path / "in.zarr"), tmp_path, MODEL,
                              f"--{option}={path}"), capsys, tmp_path)
    assert f"`--{option}`" in text and path in text and "numpy.save" in text


@pytest.mark.parametrize("option, exc", [("window", InvalidValueError),
                                         ("mask", InvalidTypeError)])
def test_window_and_mask_paths_api(tmp_path, option, exc):
    """The API takes arrays: a path is refused naming the parameter, not read."""
    path = _npy_files(tmp_path)["garbage .npy"]
    text = _api(exc, f"`{option}`", tmp_path, IMAGE, **{option: path})
    assert path in text


def test_evaluate_reads_npy_through_the_same_reader(tmp_path):
    path = _npy_files(tmp_path)["truncated .npy"]
    with pytest.raises(InvalidValueError, match="`truth` file must be a NumPy .npy array"):
        chunkseg.evaluate(IMAGE % 2, path, classes=2)


# --- 5. image files: a decompression bomb, garbage ------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path) -> str:
    """A 60-byte PNG whose header declares 20000 x 20000 grey pixels (no pixel data)."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b""))
    return str(path)


FILES = {
    "bomb.png": (InvalidValueError, "MAX_IMAGE_PIXELS"),
    "garbage.tif": (InputReadError, "readable TIFF"),
    "garbage.png": (InputReadError, "readable PNG or JPEG"),
}


def _file(tmp_path, name) -> str:
    if name == "bomb.png":
        return _bomb_png(tmp_path / name)
    (tmp_path / name).write_bytes(b"garbage, not an image file at all")
    return str(tmp_path / name)


@pytest.mark.parametrize("name", list(FILES))
def test_bad_image_file_api(tmp_path, name):
    exc, match = FILES[name]
    path = _file(tmp_path, name)
    text = _api(exc, match, tmp_path, path)
    assert "`image`" in text and path in text


@pytest.mark.parametrize("name", list(FILES))
def test_bad_image_file_cli(tmp_path, capsys, name):
    path = _file(tmp_path, name)
    text = _cli(_predict_argv(path, tmp_path), capsys, tmp_path)
    assert FILES[name][1] in text and path in text


def test_bomb_message_names_the_fixes(tmp_path):
    text = _api(InvalidValueError, "20000|400000000", tmp_path, _bomb_png(tmp_path / "b.png"))
    assert "tiled TIFF" in text and "chunkseg ingest" in text


# --- 6. object (and other non-numeric) dtypes ----------------------------------------------

@pytest.mark.parametrize("wrap", ["numpy", "dask", "xarray"])
def test_object_dtype_api(tmp_path, wrap):
    image = np.full((40, 40), 1, dtype=object)
    image = {"numpy": lambda a: a, "dask": lambda a: da.from_array(a, chunks=20),
             "xarray": lambda a: xr.DataArray(a, dims=("y", "x"))}[wrap](image)
    text = _api(InvalidTypeError, "dtype", tmp_path, image)
    assert "Got object" in text and "astype" in text


def test_string_store_cli(tmp_path, capsys):
    store = tmp_path / "in.zarr"
    z = zarr.create_array(str(store), shape=(40, 40), dtype=str, chunks=(40, 40),
                          dimension_names=("y", "x"))
    z[...] = np.full((40, 40), "a", dtype=object)
    text = _cli(_predict_argv(store, tmp_path), capsys, tmp_path)
    assert "`image` must have a boolean, integer or floating-point dtype" in text


# --- 7. an unnamed 3-D array whose last axis is too long for channels -----------------------

STACK = np.zeros((10, 40, 40), np.uint8)  # 10 planes of 40 x 40, not 10 x 40 with 40 channels


@pytest.mark.parametrize("wrap", ["numpy", "dask", "zarr", "batch of one"])
def test_unnamed_stack_api(tmp_path, wrap):
    image = {"numpy": lambda: STACK, "dask": lambda: da.from_array(STACK),
             "zarr": lambda: zarr.open_array(_store(tmp_path / "in.zarr", STACK, None)),
             "batch of one": lambda: STACK[None]}[wrap]()
    text = _api(InvalidValueError, "at most 16 channels", tmp_path, image)
    assert "10, 40, 40)" in text and "dimension_names" in text and "dims=" in text


def test_unnamed_stack_cli(tmp_path, capsys):
    text = _cli(_predict_argv(_store(tmp_path / "in.zarr", STACK, None), tmp_path), capsys,
                tmp_path)
    assert "at most 16 channels" in text and "dimension_names" in text


def test_named_stack_and_few_channels_still_open(tmp_path):
    """The fix works: named axes read the stack's planes as channels; few channels pass."""
    named = chunkseg.open_image(xr.DataArray(STACK, dims=("c", "y", "x")))
    assert named.shape == (40, 40, 10)
    store = _store(tmp_path / "named.zarr", STACK, ("c", "y", "x"))
    assert chunkseg.open_image(store).shape == (40, 40, 10)
    assert chunkseg.open_image(np.zeros((40, 40, 16), np.uint8)).shape == (40, 40, 16)
