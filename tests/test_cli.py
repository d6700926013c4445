"""The command line: ingest, plan, predict, errors and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from chunkseg.cli import main


@pytest.fixture
def png(tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (150, 170)).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    return path, img


def test_plan_from_shape(capsys):
    assert main(["plan", "40000x40000", "--tile", "256", "--overlap", "64", "--chunk", "1920"]) == 0
    out = capsys.readouterr().out
    assert "209 x 209 = 43681" in out and "21 x 21 = 441" in out


def test_plan_json_from_store(tmp_path, capsys):
    zarr.create_array(tmp_path / "a.zarr", shape=(500, 400, 3), dtype="u1", fill_value=0,
                      dimension_names=("y", "x", "c"))
    assert main(["plan", str(tmp_path / "a.zarr"), "--tile", "64", "--overlap", "16",
                 "--chunk", "96", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["image_shape"] == [500, 400] and d["channels"] == 3 and d["n_chunks"] == 6 * 5
    assert d["memory_per_task_bytes"] > 0


def test_ingest_then_predict(tmp_path, png, capsys):
    path, img = png
    store = tmp_path / "img.zarr"
    assert main(["ingest", str(path), str(store), "--chunk", "64"]) == 0
    arr = zarr.open_group(store, mode="r")["0"]  # level 0 of the NGFF image
    assert arr.chunks == (1, 64, 64)
    np.testing.assert_array_equal(arr[0], img)
    assert "OME-NGFF image" in capsys.readouterr().out
    out = tmp_path / "seg.zarr"
    assert main(["predict", str(store), str(out), "--model", "model_factories:numpy_two_class",
                 "--tile", "48", "--overlap", "16", "--chunk", "64",
                 "--outputs", "logits,probabilities,labels", "--no-progress"]) == 0
    ds = xr.open_zarr(out)
    z = img / 255.0 - 0.5  # the model is pointwise: blending returns it exactly
    np.testing.assert_allclose(ds.logits.values[0], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds.labels.values, (z < 0).astype(np.uint8))
    assert ds.probabilities.dims == ("class", "y", "x")
    assert "wrote" in capsys.readouterr().out
    # a second run refuses to overwrite, and says how
    assert main(["predict", str(store), str(out), "--model", "model_factories:numpy_two_class",
                 "--tile", "48", "--overlap", "16", "--chunk", "64", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(store), str(out), "--model", "model_factories:numpy_two_class",
                 "--tile", "48", "--overlap", "16", "--chunk", "64", "--no-progress",
                 "--overwrite", "--dtype", "float16"]) == 0
    assert xr.open_zarr(out).logits.dtype == np.float16


def test_predict_normalization_flags(tmp_path, png):
    path, img = png
    out = tmp_path / "seg.zarr"
    assert main(["predict", str(path), str(out), "--model", "model_factories:numpy_two_class",
                 "--tile", "48", "--overlap", "16", "--scale", "2", "--mean", "255",
                 "--std", "2", "--no-progress", "--outputs", "logits"]) == 0
    x = (img * 2.0 - 255) / 2  # normalised input, then the model's own x / 255 - 0.5
    np.testing.assert_allclose(xr.open_zarr(out).logits.values[0], x / 255 - 0.5, atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tile", "64", "--overlap", "64"], "overlap"),
        (["--chunk", "0"], "chunks"),
        (["--outputs", "logit"], "outputs"),
        (["--window", "hann"], "window"),
    ],
)
def test_predict_bad_arguments_exit_2(tmp_path, png, capsys, argv, message):
    path, _ = png
    out = tmp_path / "seg.zarr"
    code = main(["predict", str(path), str(out), "--model", "model_factories:numpy_two_class",
                 "--no-progress"] + argv)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "ingest" in capsys.readouterr().out


def test_predict_with_mask(tmp_path, png):
    path, img = png
    mask = np.zeros((15, 17), bool)
    mask[:5, :5] = True
    np.save(tmp_path / "mask.npy", mask)
    out = tmp_path / "seg.zarr"
    assert main(["predict", str(path), str(out), "--model", "model_factories:numpy_two_class",
                 "--tile", "48", "--overlap", "16", "--chunk", "64", "--no-progress",
                 "--mask", str(tmp_path / "mask.npy")]) == 0
    ds = xr.open_zarr(out)
    logits = ds.logits.values
    assert np.isnan(logits[:, 120:, 120:]).all() and np.isfinite(logits[:, :20, :20]).all()
    assert ds.attrs["mask"] == "array"
