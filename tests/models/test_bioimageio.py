"""bioimage.io model packages: export the shipped U-Net, validate it, run it back through chunkseg."""

from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile

import numpy as np
import pytest

spec = pytest.importorskip("bioimageio.spec")
torch = pytest.importorskip("torch")

import chunkseg  # noqa: E402
from chunkseg.errors import (  # noqa: E402
    InvalidValueError,
    MissingDependencyError,
    NotFoundError,
    OutputExistsError,
)
from chunkseg.models.adapters import TorchAdapter  # noqa: E402
from chunkseg.models.bioimageio import (  # noqa: E402
    BioimageioModel,
    is_bioimageio_source,
    load_bioimageio,
)
from chunkseg.models.load import BUILTIN_MODELS, as_model, load_model, model_defaults  # noqa: E402
from chunkseg.models.spec import ModelSpec, Normalization  # noqa: E402
from chunkseg.models.unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD, pretrained  # noqa: E402
from chunkseg.training.export import export_bioimageio  # noqa: E402

ISBI = BUILTIN_MODELS["isbi2012-unet"][1]()
STEP = pretrained().multiple  # the shipped U-Net's 2**depth
MIN_TILE = STEP * (64 // STEP + 1)  # the smallest valid size above twice the default halo


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The shipped model exported once as a folder package; the path of its rdf.yaml."""
    return export_bioimageio(tmp_path_factory.mktemp("bioimageio") / "isbi2012-unet")


@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    return export_bioimageio(tmp_path_factory.mktemp("bioimageio") / "isbi2012-unet.zip")


def _test_tensors(rdf):
    folder = rdf.parent
    return np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")


def _rewritten(rdf, out, change):
    """A copy of the package with ``change(descr)`` applied, saved by bioimageio.spec."""
    descr = spec.load_description(rdf)
    change(descr)
    return spec.save_bioimageio_package_as_folder(descr, output_path=out) / "rdf.yaml"


# --- the package -----------------------------------------------------------------------------


def test_export_validates_with_bioimageio_spec(package):
    assert package.name == "rdf.yaml"
    descr = spec.load_description(package, perform_io_checks=True)
    assert not isinstance(descr, spec.InvalidDescr), descr.validation_summary
    assert isinstance(descr, spec.ModelDescr)
    assert descr.validation_summary.status == "valid-format"
    assert str(descr.license) == "BSD-3-Clause" and len(descr.cite) == 3 and descr.covers
    files = {p.name for p in package.parent.iterdir()}
    assert {"isbi2012_unet.pt", "test_input.npy", "test_output.npy", "cover.png",
            "README.md", "rdf.yaml"} <= files
    assert "## Validation" in (package.parent / "README.md").read_text("utf-8")
    ipt, out = descr.inputs[0], descr.outputs[0]
    assert [a.type for a in ipt.axes] == ["batch", "channel", "space", "space"]
    assert (ipt.axes[2].size.min, ipt.axes[2].size.step) == (MIN_TILE, STEP)
    assert [a.halo for a in out.axes[2:]] == [32, 32]
    assert out.axes[1].channel_names == ["cell", "membrane"]
    assert descr.weights.torchscript is not None


def test_preprocessing_equals_the_normalization(package):
    descr = spec.load_description(package)
    (op,) = [p for p in descr.inputs[0].preprocessing if p.id == "fixed_zero_mean_unit_variance"]
    assert op.kwargs.mean == pytest.approx(ISBI_MEAN / ISBI_SCALE)  # 124.051635
    assert op.kwargs.std == pytest.approx(ISBI_STD / ISBI_SCALE)  # 42.46413
    x = np.arange(256, dtype=np.float32).reshape(1, 1, 16, 16)
    theirs = (x.astype(np.float64) - op.kwargs.mean) / op.kwargs.std
    np.testing.assert_allclose(ISBI(x), theirs, rtol=1e-6, atol=1e-6)


def test_test_output_is_the_models_softmax(package):
    x, y = _test_tensors(package)
    assert x.shape == (1, 1, 256, 256) and x.dtype == np.float32 and 0 <= x.min() < x.max() <= 255
    assert y.shape == (1, 2, 256, 256) and y.dtype == np.float32
    logits = TorchAdapter(pretrained(), normalization=ISBI)(x)
    np.testing.assert_allclose(y, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-5)
    assert 0.1 < y[0, 1].mean() < 0.5  # some membrane, mostly cells


# --- loading it back -------------------------------------------------------------------------


def test_load_gives_back_the_builtin_normalization_classes_tile(package):
    model = load_bioimageio(package)
    assert isinstance(model, BioimageioModel)
    assert model.normalization == ISBI
    np.testing.assert_allclose(model.normalization.scale, ISBI.scale, rtol=1e-12)
    np.testing.assert_allclose(model.normalization.mean, ISBI.mean, rtol=1e-12)
    np.testing.assert_allclose(model.normalization.std, ISBI.std, rtol=1e-12)
    assert model.class_names == ("cell", "membrane")
    assert (model.tile, model.overlap, model.halo) == (256, 64, (32, 32))
    assert (model.tile_min, model.tile_step, model.input_channels) == (
        (MIN_TILE, MIN_TILE), (STEP, STEP), 1)
    assert model.weights_format == "torchscript" and model.weights.endswith(".pt")
    assert model.postprocessing == ("softmax",) and model.batch_size is None
    json.dumps(model.to_dict())
    assert model.to_model_spec("cpu") == ModelSpec(model.weights, "cpu", ISBI)
    assert load_bioimageio(package.parent).to_dict() | {"source": ""} == \
        model.to_dict() | {"source": ""}  # the folder names the same package


def test_preprocessing_without_the_hint_maps_to_the_same_function(package, tmp_path):
    """Without chunkseg's own record in the config, the map is derived from the ops alone."""
    gain, offset = ISBI_SCALE / ISBI_STD, -ISBI_MEAN / ISBI_STD
    from bioimageio.spec.model import v0_5

    def to_scale_linear(descr):
        descr.inputs[0].preprocessing[1] = v0_5.ScaleLinearDescr(
            kwargs=v0_5.ScaleLinearKwargs(gain=gain, offset=offset))
        descr.config.chunkseg = None

    rdf = _rewritten(package, tmp_path / "scale_linear", to_scale_linear)
    norm = load_bioimageio(rdf).normalization
    x = np.arange(256, dtype=np.float32).reshape(1, 1, 16, 16)
    np.testing.assert_allclose(norm(x), ISBI(x), rtol=1e-5, atol=1e-6)


def test_model_defaults(package):
    expected = {"tile": 256, "overlap": 64, "class_names": ("cell", "membrane")}
    assert model_defaults(str(package)) == expected
    assert model_defaults(package) == expected  # a Path
    assert model_defaults(package.parent) == expected  # the folder
    assert model_defaults(ModelSpec(str(package))) == expected
    assert model_defaults(as_model(str(package))) == expected  # a LazyModel
    assert model_defaults(load_bioimageio(package)) == expected
    assert model_defaults("isbi2012-unet") == {"class_names": ("cell", "membrane")}
    for other in ("model.pt", "model.onnx", "pkg.mod:factory", lambda b: b, None, 3):
        assert model_defaults(other) == {}


def test_is_bioimageio_source(package, tmp_path):
    for yes in ("a/rdf.yaml", "b/x.bioimageio.yaml", "m.ZIP", package, package.parent,
                "https://host/models/rdf.yaml"):
        assert is_bioimageio_source(yes)
    for no in ("isbi2012-unet", "m.pt", "m.onnx", "pkg.mod:factory", tmp_path, "", None, 1):
        assert not is_bioimageio_source(no)


def test_model_spec_resolves_through_the_package(package):
    spec_ = ModelSpec(str(package))
    assert spec_.resolved_normalization() == ISBI
    own = Normalization(1 / 255, 0.5, 0.2)
    assert ModelSpec(str(package), normalization=own).resolved_normalization() == own
    batch = np.random.default_rng(0).uniform(0, 255, (2, 1, 80, 96)).astype(np.float32)
    expected = TorchAdapter(pretrained(), normalization=ISBI)(batch)
    np.testing.assert_allclose(load_model(spec_)(batch), expected, rtol=1e-5, atol=1e-5)
    assert spec_.to_dict()["normalization"] == ISBI.to_dict()


def test_predict_one_tile_reproduces_the_test_output(package):
    """A tile that covers the whole test tensor (overlap 0: one tile, no padding, no blending)
    must give the package's test output up to float32 rounding."""
    x, y = _test_tensors(package)
    image = x[0, 0]
    ds = chunkseg.predict(image, str(package), tile=256, overlap=0,
                          outputs="probabilities,labels")
    diff = np.abs(ds.probabilities.values - y[0])
    assert diff.max() < 1e-5, diff.max()  # measured 1.1e-6
    np.testing.assert_array_equal(ds.labels.values, y[0].argmax(0))
    ds8 = chunkseg.predict(image.astype(np.uint8), str(package), tile=256, overlap=0,
                           outputs="probabilities")  # the raw uint8 section gives the same
    np.testing.assert_allclose(ds8.probabilities.values, ds.probabilities.values, atol=1e-6)


def test_predict_with_the_packages_tile_and_overlap_matches_inside(package):
    """Blended tiles (the package's tile 256 and overlap 64: 2 x 2 tiles over the reflect-padded
    test tensor) agree with the whole-tensor test output away from the border."""
    x, y = _test_tensors(package)
    d = model_defaults(str(package))
    ds = chunkseg.predict(x[0, 0], str(package), tile=d["tile"], overlap=d["overlap"],
                          outputs="probabilities,labels")
    inner = (slice(None), slice(32, -32), slice(32, -32))
    diff = np.abs(ds.probabilities.values - y[0])[inner]
    # measured 3.4e-3 for the depth-4 U-Net (receptive field 188 px, so tile borders 32 px
    # away still reach the inner pixels), 3.8e-4 for the depth-3 one
    assert diff.mean() < 5e-3, diff.mean()
    agree = (ds.labels.values == y[0].argmax(0))[inner[1:]].mean()
    assert agree > 0.995, agree  # measured 0.9997


def test_zip_round_trip(package, zipped):
    assert zipped.suffix == ".zip" and zipfile.is_zipfile(zipped)
    descr = spec.load_description(zipped, perform_io_checks=True)
    assert isinstance(descr, spec.ModelDescr)
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        x = np.load(io.BytesIO(z.read("test_input.npy")))
        y = np.load(io.BytesIO(z.read("test_output.npy")))
        weights = z.read("isbi2012_unet.pt")
    assert {"rdf.yaml", "isbi2012_unet.pt", "test_input.npy", "test_output.npy"} <= names
    model = load_bioimageio(zipped)
    folder = load_bioimageio(package)
    assert model.to_dict() | {"source": "", "weights": ""} == \
        folder.to_dict() | {"source": "", "weights": ""}
    assert model.weights.endswith(".pt")  # copied out of the zip once, named by its sha256
    with open(model.weights, "rb") as f:
        assert f.read() == weights
    ds = chunkseg.predict(x[0, 0], str(zipped), tile=256, overlap=0, outputs="probabilities")
    assert np.abs(ds.probabilities.values - y[0]).max() < 1e-5


def test_export_refuses_to_overwrite(package, zipped, tmp_path):
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_bioimageio(package.parent)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        export_bioimageio(zipped)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a bioimage.io package"):
        export_bioimageio(other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(InvalidValueError, match="`model`"):
        export_bioimageio(tmp_path / "x", model="my.pt")
    with pytest.raises(InvalidValueError, match="`test_size`"):
        export_bioimageio(tmp_path / "x", test_size=100)


# --- bad packages ----------------------------------------------------------------------------


def test_unsupported_preprocessing_names_the_op(package, tmp_path):
    from bioimageio.spec.model import v0_5

    def per_sample(descr):
        descr.inputs[0].preprocessing[1] = v0_5.ZeroMeanUnitVarianceDescr()

    rdf = _rewritten(package, tmp_path / "zmuv", per_sample)
    with pytest.raises(InvalidValueError, match="zero_mean_unit_variance") as err:
        load_bioimageio(rdf)
    assert "normalization=" in str(err.value) and "`model`" in str(err.value)
    with pytest.raises(InvalidValueError, match="zero_mean_unit_variance"):
        chunkseg.predict(np.zeros((64, 64), np.uint8), str(rdf), tile=MIN_TILE, overlap=0)
    own = Normalization(1 / 255, 0.5, 0.2)  # the fix the message names
    assert load_bioimageio(rdf, normalization=own).normalization == own
    ds = chunkseg.predict(np.zeros((64, 64), np.uint8), ModelSpec(str(rdf), normalization=own),
                          tile=MIN_TILE, overlap=0, outputs="labels")
    assert ds.labels.shape == (64, 64)
    assert model_defaults(str(rdf))["tile"] == 256  # the defaults need no normalisation
    ds = chunkseg.predict(np.zeros((64, 64), np.uint8), str(rdf), normalization=own,
                          tile=MIN_TILE, overlap=0, outputs="labels")
    assert ds.labels.shape == (64, 64)


def test_missing_weights_file(package, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(package.parent, broken)
    (broken / "isbi2012_unet.pt").unlink()
    with pytest.raises(NotFoundError, match="isbi2012_unet.pt"):
        load_bioimageio(broken / "rdf.yaml")


def test_missing_weights_file_cli(package, tmp_path, capsys):
    from PIL import Image

    from chunkseg.cli import main

    broken = tmp_path / "broken"
    shutil.copytree(package.parent, broken)
    (broken / "isbi2012_unet.pt").unlink()
    image, out = tmp_path / "in.png", tmp_path / "out.zarr"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    code = main(["predict", str(image), str(out), "--model", str(broken / "rdf.yaml"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("chunkseg predict: error: `--model` bioimage.io package")
    assert "isbi2012_unet.pt" in err[0] and not out.exists()


def test_missing_package_and_invalid_description(package, tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        load_bioimageio(tmp_path / "none" / "rdf.yaml")
    with pytest.raises(NotFoundError, match="rdf.yaml"):
        load_bioimageio(tmp_path)  # a folder without a description
    bad = tmp_path / "bad"
    shutil.copytree(package.parent, bad)
    text = (bad / "rdf.yaml").read_text("utf-8")
    (bad / "rdf.yaml").write_text(text.replace("halo: 32", "halo: 200"), "utf-8")
    with pytest.raises(InvalidValueError, match="validation.*halo 200"):
        load_bioimageio(bad / "rdf.yaml")


def test_without_bioimageio_spec(package, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(package.parent, copy)
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chunkseg\[bioimageio\]'"):
        load_bioimageio(copy / "rdf.yaml")
    with pytest.raises(MissingDependencyError, match="bioimageio.spec"):
        export_bioimageio(tmp_path / "out")


def test_bioimageio_core_test_model(package):
    """bioimage.io's own check (runs the weights on the test input); optional, as bioimageio.core
    pins an older bioimageio.spec."""
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package)
    assert summary.status == "passed", summary.format()


def test_cli_exports_and_predicts_with_a_package(tmp_path, capsys):
    from chunkseg.cli import main

    out = tmp_path / "pkg.zip"
    assert main(["export-bioimageio", str(out)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    section = tmp_path / "section.png"
    from PIL import Image

    from chunkseg.demo import load_test_sections

    Image.fromarray(load_test_sections()[3][:200, :300]).save(section)
    store = tmp_path / "seg.zarr"
    assert main(["predict", str(section), str(store), "--model", str(out), "--chunk", "128",
                 "--outputs", "probabilities,labels", "--no-progress"]) == 0
    ds = chunkseg.open_output(str(store))
    assert ds.attrs["tile"] == [256, 256] and ds.attrs["overlap"] == [64, 64]
    assert list(ds["class"].values) == ["cell", "membrane"]
    # the same as the built-in model through chunkseg (the package's weights are its trace)
    ref = chunkseg.predict(str(section), "isbi2012-unet", chunks=128,
                           outputs="probabilities")
    np.testing.assert_allclose(ds.probabilities.values, ref.probabilities.values, atol=1e-5)
    assert main(["export-bioimageio", str(out)]) == 2  # exists: refused, one line
    assert "overwrite" in capsys.readouterr().err


def test_overwrite_replaces_only_the_files_the_package_records(tmp_path):
    """Ownership at every depth: a package folder is replaced only when every file in it,
    in any subfolder, is one chunkseg recorded writing there."""
    import hashlib

    from chunkseg.outputs._ownership import RECORD, read_record

    out = tmp_path / "pkg"
    rdf = export_bioimageio(out)
    recorded = read_record(out)
    assert recorded and "rdf.yaml" in recorded
    assert recorded == {p.relative_to(out).as_posix() for p in out.rglob("*")
                        if p.is_file()} - {RECORD}
    mine = out / "docs" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
              if p.is_file()}
    with pytest.raises(OutputExistsError, match="docs/notes.txt"):
        export_bioimageio(out, overwrite=True)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
            if p.is_file()} == digest
    mine.unlink()
    mine.parent.rmdir()
    assert export_bioimageio(out, overwrite=True) == rdf
    # replace only on success: a replacement that fails leaves the earlier package as it was
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
              if p.is_file()}
    import chunkseg.training.export as bio

    def broken(*args, **kwargs):
        raise OSError("disk full")

    real, bio.write_record = bio.write_record, broken
    try:
        with pytest.raises(OSError, match="disk full"):
            export_bioimageio(out, overwrite=True)
    finally:
        bio.write_record = real
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
            if p.is_file()} == digest
    assert export_bioimageio(out, overwrite=True) == rdf  # clears the failed staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]
    # a folder with an rdf.yaml but no record (not written by chunkseg) is never emptied
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "rdf.yaml").write_text("type: model\n")
    (other / "weights.pt").write_bytes(b"theirs")
    with pytest.raises(OutputExistsError, match="chunkseg did not write"):
        export_bioimageio(other, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["rdf.yaml", "weights.pt"]
