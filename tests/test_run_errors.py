"""Errors found while a run is under way, and the checks that keep them from starting: a model
raising mid-run, NaN/inf in the input, float16 overflow, a bad ``compression_level``,
``chunkseg plan``'s counts, ``chunkseg label --name``, tampered output metadata for
``chunkseg info``, and Ctrl-C / SIGTERM during ``chunkseg predict``.

Through the CLI each error is one line on stderr starting ``chunkseg <command>: error:``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from model_factories import FAIL_ON_ENV

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import (
    ChunksegError,
    Float16OverflowWarning,
    InvalidTypeError,
    InvalidValueError,
    ModelOutputError,
    ModelRunError,
)
from chunkseg.kernels import blend

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
KW = dict(tile=32, overlap=8, chunks=48)
GRID = ["--tile", "32", "--overlap", "8", "--chunk", "48", "--no-progress"]


def _noise(shape=(144, 144)) -> np.ndarray:
    """uint8 noise in 0..254 (the late models fail only on 255)."""
    return np.random.default_rng(5).integers(0, 255, shape).astype(np.uint8)


def _zarr(path: Path, image: np.ndarray) -> str:
    z = zarr.create_array(str(path), shape=image.shape, dtype=image.dtype, chunks=(48, 48),
                          dimension_names=("y", "x"))
    z[...] = image
    return str(path)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"chunkseg {command}: error: "), err
    return err[0]


def _incomplete(out: Path) -> tuple[int, int]:
    done, total = chunkseg.output_progress(str(out))
    assert done < total
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is False
    return done, total


# 1. a model raising mid-run ------------------------------------------------------------------

def _late_pixel_image():
    image = _noise()
    image[130, 120] = 255  # in chunk (2, 2), the last of the 3 x 3 grid
    return image


@pytest.mark.parametrize("model, kernel", [("model_factories:late_raising_conv3x3", "numpy"),
                                           ("model_factories:torch_late_raising", "torch")])
def test_model_raising_mid_run_names_the_chunk_and_resume(tmp_path, monkeypatch, model, kernel):
    if kernel == "torch":
        pytest.importorskip("torch")
    image, out = _late_pixel_image(), tmp_path / "out.zarr"
    monkeypatch.setenv(FAIL_ON_ENV, "255")
    with pytest.raises(ModelRunError) as info:
        chunkseg.predict_to_zarr(image, model, str(out), scheduler="sync", kernel=kernel,
                                 outputs="logits,labels", **KW)
    err = info.value
    assert isinstance(err, RuntimeError) and isinstance(err, ChunksegError)
    message = str(err)
    m = re.match(r"in chunk \((\d), (\d)\) \(y, x of the chunk grid\), tiles .* image pixels "
                 r"y (\d+)\.\.(\d+), x (\d+)\.\.(\d+): ", message)
    assert m, message
    iy, ix, y0, y1, x0, x1 = map(int, m.groups())
    assert y0 <= 130 < y1 and x0 <= 120 < x1  # the block over the failing pixel
    assert "`model` raised RuntimeError" in message
    assert "model failed on a late tile (a pixel of value 255)" in message
    assert "resume=True (CLI: --resume)" in message
    # the model's own exception is chained, with its traceback
    assert type(err.__cause__) is RuntimeError
    assert "model failed on a late tile" in str(err.__cause__)
    assert err.__cause__.__traceback__ is not None
    done, total = _incomplete(out)
    assert done >= 1 and zarr.open_group(str(out))["chunkseg/done"][iy, ix] == 0
    monkeypatch.delenv(FAIL_ON_ENV)  # the model fixed: resume finishes it
    chunkseg.predict_to_zarr(image, model, str(out), resume=True, kernel=kernel,
                             outputs="logits,labels", **KW)
    clean = chunkseg.predict(image, model, kernel=kernel, outputs="logits,labels", **KW)
    np.testing.assert_array_equal(zarr.open_group(str(out))["logits"][...], clean.logits.values)


def test_model_raising_mid_run_cli_one_line(tmp_path, monkeypatch, capsys):
    src = _zarr(tmp_path / "in.zarr", _late_pixel_image())
    monkeypatch.setenv(FAIL_ON_ENV, "255")
    code = main(["predict", src, str(tmp_path / "out.zarr"), "--model",
                 "model_factories:late_raising_conv3x3", "--scheduler", "sync", *GRID])
    assert code == 2
    line = _one_error_line(capsys, "predict")
    assert re.search(r"in chunk \(\d, \d\) .*`--model` raised RuntimeError .*a pixel of value 255"
                     r".*--resume", line), line
    _incomplete(tmp_path / "out.zarr")


class _Raises:
    def __init__(self, error):
        self.error = error

    def __call__(self, batch):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), MemoryError("oom"),
                                   ModelOutputError("chunkseg's own")])
def test_run_model_lets_interrupts_memory_and_own_errors_through(error):
    batch = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(type(error)) as info:
        blend.run_model(_Raises(error), batch)
    assert info.value is error  # unchanged, not wrapped


def test_memory_error_in_a_task_is_not_wrapped():
    def model(batch):  # fails on the late tiles only, after the probe
        if (batch == 255).any():
            raise MemoryError("oom")
        return np.concatenate([batch, -batch], axis=1)

    ds = chunkseg.predict(_late_pixel_image(), model, outputs="logits", **KW)
    with pytest.raises(MemoryError, match="oom"):
        ds.logits.compute(scheduler="sync")


def test_model_raising_on_the_probe_is_one_error_before_anything_is_written(tmp_path):
    out = tmp_path / "out.zarr"
    with pytest.raises(ModelRunError, match=r"raised ZeroDivisionError .*: boom") as info:
        chunkseg.predict_to_zarr(_noise((64, 64)), _Raises(ZeroDivisionError("boom")),
                                 str(out), **KW)
    assert type(info.value.__cause__) is ZeroDivisionError
    assert not out.exists()


# 2. NaN / inf in the input --------------------------------------------------------------------

def _float_image(bad: float, at=(130, 120)) -> np.ndarray:
    image = _noise().astype(np.float32)
    image[at] = bad
    return image


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_blamed_on_the_input(tmp_path, bad):
    out = tmp_path / "out.zarr"
    with pytest.raises(InvalidValueError) as info:
        chunkseg.predict_to_zarr(_float_image(bad), "model_factories:numpy_conv3x3", str(out),
                                 scheduler="sync", **KW)
    message = str(info.value)
    assert not isinstance(info.value, ModelOutputError)
    assert message.startswith("`image` must hold finite values"), message
    m = re.search(r"in chunk \(\d, \d\) \(y, x of the chunk grid\), image pixels y (\d+)\.\.(\d+), "
                  r"x (\d+)\.\.(\d+) hold 1 pixels with NaN or infinity \(the first at y 130, "
                  r"x 120 of the image\)", message)
    assert m, message
    y0, y1, x0, x1 = map(int, m.groups())
    assert y0 <= 130 < y1 and x0 <= 120 < x1
    assert "nan_to_num" in message  # the fix
    _incomplete(out)


def test_non_finite_input_in_the_first_tile_fails_before_writing(tmp_path, capsys):
    src = _zarr(tmp_path / "in.zarr", _float_image(np.nan, at=(2, 3)))
    out = tmp_path / "out.zarr"
    assert main(["predict", src, str(out), "--model", "model_factories:numpy_conv3x3",
                 *GRID]) == 2
    line = _one_error_line(capsys, "predict")
    assert "the first tile" in line and "y 2, x 3 of the image" in line, line
    assert not out.exists()


def test_non_finite_input_under_skipped_tiles_is_allowed():
    image = _float_image(np.nan, at=(142, 142))  # only tiles of the skipped cell cover it
    mask = np.ones((3, 3), bool)
    mask[2, 2] = False
    ds = chunkseg.predict(image, "model_factories:numpy_conv3x3", mask=mask, classes=["a", "b"],
                          outputs="logits", **KW)
    logits = ds.logits.values
    assert np.isfinite(logits[:, :96, :96]).all()


def test_torch_kernel_checks_the_input_too(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(InvalidValueError, match=r"in chunk \(\d, \d\).*NaN or infinity.*y 130, "
                                                r"x 120"):
        chunkseg.predict_to_zarr(_float_image(np.nan), "model_factories:torch_huge_logits",
                                 str(tmp_path / "out.zarr"), kernel="torch", scheduler="sync",
                                 **KW)


# 3. float16 overflow ------------------------------------------------------------------------

def _clamp_warnings(record) -> list:
    return [w for w in record if issubclass(w.category, Float16OverflowWarning)]


@pytest.mark.parametrize("model, kernel", [("model_factories:huge_logits", "numpy"),
                                           ("model_factories:torch_huge_logits", "torch")])
def test_float16_logits_are_clamped_with_one_warning(tmp_path, model, kernel):
    if kernel == "torch":
        pytest.importorskip("torch")
    image = _noise()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = chunkseg.predict_to_zarr(image, model, str(tmp_path / "out.zarr"), dtype="float16",
                                      kernel=kernel, outputs="logits,probabilities,labels",
                                      **KW)
    clamped = _clamp_warnings(record)
    assert len(clamped) == 1, [str(w.message) for w in clamped]  # once per run, 9 chunks
    message = str(clamped[0].message)
    assert re.match(r"\d+ logits of output chunk \(\d, \d\) \(y, x of the chunk grid\) lie "
                    r"beyond the float16 range \(\+-65504\) and were clamped", message), message
    assert int(message.split()[0]) == 2 * 48 * 48  # both classes of a whole chunk
    assert not [w for w in record if issubclass(w.category, RuntimeWarning)]  # no overflow
    logits = ds.logits.values
    assert logits.dtype == np.float16 and np.isfinite(logits).all()
    expected = np.where(image >= 128, 65504.0, -65504.0)
    np.testing.assert_array_equal(logits[0], expected)
    np.testing.assert_array_equal(logits[1], -expected)
    # the labels and probabilities come from the unclamped float32 logits
    np.testing.assert_array_equal(ds.labels.values, (image < 128).astype(np.uint8))
    assert np.isfinite(ds.probabilities.values).all()


def test_float16_predict_in_memory_is_clamped_too():
    with pytest.warns(Float16OverflowWarning, match="clamped"):
        logits = chunkseg.predict(_noise(), "model_factories:huge_logits", dtype="float16",
                                  outputs="logits", **KW).logits.values
    assert np.isfinite(logits).all() and np.abs(logits).max() == 65504


def test_float16_in_range_does_not_warn(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        chunkseg.predict_to_zarr(_noise(), "model_factories:huge_logits",
                                 str(tmp_path / "out.zarr"), dtype="float16", **KW)
        chunkseg.predict_to_zarr(_noise(), "model_factories:numpy_conv3x3",
                                 str(tmp_path / "b.zarr"), dtype="float16", **KW)
    assert len(_clamp_warnings(record)) == 1  # the first run only


def test_logits_cast_keeps_nan_and_counts():
    cast = blend.LogitsCast("float16")
    x = np.array([[np.nan, 7e4, -1e9, 65504.0, 1.5]], np.float32)
    with pytest.warns(Float16OverflowWarning, match="^2 logits lie beyond"):
        y = cast(x)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, np.array([[np.nan, 65504, -65504, 65504, 1.5]], np.float16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cast(x)  # warned once already
        assert blend.LogitsCast("float32")(x).dtype == np.float32


# 4. compression_level ------------------------------------------------------------------------

@pytest.mark.parametrize("level, outputs, exc, match", [
    (99, "logits,labels", InvalidValueError, "from 0 to 9 when logits are written.*Got 99"),
    (10, "logits", InvalidValueError, "from 0 to 9"),
    (23, "labels", InvalidValueError, r"from 0 to 22 \(zstd\). Got 23"),
    (-1, "labels", InvalidValueError, "from 0 to 22"),
    (True, "labels", InvalidTypeError, "must be an int"),
    (1.0, "labels", InvalidTypeError, "must be an int"),
])
def test_compression_level_is_checked_before_anything_is_written(tmp_path, level, outputs,
                                                                  exc, match):
    out = tmp_path / "out.zarr"
    with pytest.raises(exc, match=match):
        chunkseg.predict_to_zarr(_noise((64, 64)), "model_factories:numpy_conv3x3", str(out),
                                 compression_level=level, outputs=outputs, **KW)
    assert not out.exists()


def test_compression_level_zstd_only_takes_more(tmp_path):
    ds = chunkseg.predict_to_zarr(_noise((64, 64)), "model_factories:numpy_conv3x3",
                                  str(tmp_path / "out.zarr"), compression_level=15,
                                  outputs="labels", **KW)
    assert ds.labels.shape == (64, 64)


# 5. positive counts: chunkseg plan, batch_size -------------------------------------------------

@pytest.mark.parametrize("args, name", [(["--classes", "0"], "classes"),
                                        (["--classes", "-2"], "classes"),
                                        (["--batch-size", "-1"], "batch_size"),
                                        (["--batch-size", "0", "--json"], "batch_size")])
def test_plan_refuses_non_positive_counts(capsys, args, name):
    assert main(["plan", "1000x1000", *args]) == 2
    line = _one_error_line(capsys, "plan")
    flag = "--" + name.replace("_", "-")  # the line names the option, once
    assert f"`{flag}` must be a positive int" in line and "CLI:" not in line, line


def test_positive_int_is_the_one_batch_size_check(tmp_path):
    from chunkseg._check import positive_int

    assert positive_int(np.int64(3), "n") == 3
    for bad, exc in [(True, InvalidTypeError), (2.0, InvalidTypeError), ("8", InvalidTypeError),
                     (0, InvalidValueError), (-1, InvalidValueError)]:
        with pytest.raises(exc, match="`n` must be a positive int"):
            positive_int(bad, "n")
    plan = chunkseg.plan_tiles((100, 100), 32, 8, 48)
    with pytest.raises(InvalidValueError, match="`classes`"):
        plan.memory_per_task(classes=0)
    with pytest.raises(InvalidTypeError, match="`batch_size`"):
        chunkseg.predict_to_zarr(_noise((64, 64)), "model_factories:numpy_conv3x3",
                                 str(tmp_path / "out.zarr"), batch_size=True, **KW)
    assert not (tmp_path / "out.zarr").exists()


# 6 and 7: an existing output -------------------------------------------------------------------

@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("output") / "out.zarr"
    chunkseg.predict_to_zarr(_noise((96, 96)), "model_factories:numpy_conv3x3", str(out),
                             outputs="logits,labels", **KW)
    return out


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "__meta", "labels"])
def test_label_refuses_bad_names(output, capsys, name):
    before = sorted(p.name for p in output.iterdir())
    assert main(["label", str(output), "--name", name, "--no-progress"]) == 2
    line = _one_error_line(capsys, "label")
    assert "`--name` must be a new array name" in line and repr(name) in line, line
    with pytest.raises(InvalidValueError, match="`name` must be a new array name"):
        chunkseg.label(str(output), name=name)
    assert sorted(p.name for p in output.iterdir()) == before  # nothing written


def _tamper(src: Path, dst: Path, change) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = dst / "zarr.json"
    if isinstance(change, str):
        meta.write_text(change)
    else:
        doc = json.loads(meta.read_text())
        change(doc)
        meta.write_text(json.dumps(doc))
    return dst


TAMPERINGS = {
    "tile a string": lambda d: d["attributes"].__setitem__("tile", "abc"),
    "fingerprint tile a string": lambda d: d["attributes"]["fingerprint"].__setitem__("tile",
                                                                                     "abc"),
    "fingerprint a list": lambda d: d["attributes"].__setitem__("fingerprint", [1, 2]),
    "fingerprint a string": lambda d: d["attributes"].__setitem__("fingerprint", "x"),
    "complete a string": lambda d: d["attributes"].__setitem__("complete", "yes"),
    "classes a list": lambda d: d["attributes"]["fingerprint"].__setitem__("classes", [2]),
    "attributes a list": lambda d: d.__setitem__("attributes", [1]),
    "zarr.json garbage": "{garbage",
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_info_refuses_tampered_metadata(output, tmp_path, capsys, name):
    store = _tamper(output, tmp_path / "t.zarr", TAMPERINGS[name])
    assert main(["info", str(store)]) == 2
    line = _one_error_line(capsys, "info")
    assert "metadata" in line and "--overwrite" in line, line


def test_info_of_the_untouched_output_works(output, capsys):
    assert main(["info", str(output)]) == 0
    assert "complete   yes: 4 of 4 chunks written" in capsys.readouterr().out


# 8. Ctrl-C and SIGTERM ------------------------------------------------------------------------

SLOW = ["--model", "model_factories:slow_conv3x3", "--tile", "48", "--overlap", "16",
        "--chunk", "64", "--outputs", "logits,labels", "--no-progress"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT)])
    return env


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal gives it (default, not blocked)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def _wait_for_a_chunk(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (out / "zarr.json").exists():
            try:
                if chunkseg.output_progress(str(out))[0] >= 1:
                    return
            except (KeyError, FileNotFoundError, ValueError):  # the manifest is being made
                pass
        time.sleep(0.05)
    raise TimeoutError(f"no chunk written in {timeout} s")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig, code, what", [(signal.SIGINT, 130, "Ctrl-C (SIGINT)"),
                                             (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupted_predict_one_line_then_resume(tmp_path, sig, code, what):
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    image = (np.random.default_rng(11).random((400, 400)) * 255).astype(np.uint8)
    _zarr(src, image)
    # The child starts with Ctrl-C's default disposition, unblocked: in the full suite
    # something earlier leaves SIGINT ignored or blocked in this process (not visible to
    # signal.getsignal), which a child inherits and then finishes its run untouched (exit code
    # 0); the test is about chunkseg's handling, not the suite's state
    proc = subprocess.Popen([sys.executable, "-m", "chunkseg.cli", "predict", str(src),
                             str(out), *SLOW], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        _wait_for_a_chunk(out, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    m = re.fullmatch(rf"chunkseg predict: error: interrupted by {re.escape(what)}: (\d+) of "
                     r"(\d+) chunks are written and marked in '.*out\.zarr', which stays marked "
                     r"incomplete; finish it with the same command and --resume\.", lines[0])
    assert m, lines[0]
    said, total = int(m[1]), int(m[2])
    done, total_now = _incomplete(out)  # tasks under way when it stopped may have finished
    assert 1 <= said <= done < total == total_now
    sys.path.insert(0, str(TESTS))
    assert main(["predict", str(src), str(out), *SLOW, "--resume"]) == 0
    assert zarr.open_group(str(out)).attrs["complete"] is True
    if sig == signal.SIGINT:  # the resumed output equals an uninterrupted run
        clean = chunkseg.predict(image, "model_factories:numpy_conv3x3", tile=48, overlap=16,
                                 chunks=64, outputs="logits,labels")
        np.testing.assert_array_equal(zarr.open_group(str(out))["logits"][...],
                                      clean.logits.values)


def test_main_restores_the_sigterm_handler(capsys):
    def mine(signum, frame):  # pragma: no cover - never called
        pass

    old = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["plan", "100x100"]) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_keyboard_interrupt_in_another_command_is_one_line(monkeypatch, capsys):
    import chunkseg.plan

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chunkseg.plan, "plan_tiles", interrupted)
    assert main(["plan", "100x100"]) == 130
    assert _one_error_line(capsys, "plan") == "chunkseg plan: error: interrupted by Ctrl-C (SIGINT)."
