"""Stacks of planes and plane selection: a 2-D model over (t, z, y, x) and (z, y, x, c) inputs
is the 2-D path plane by plane; ``isel`` / ``--planes`` select planes; resume holds per plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from model_factories import numpy_conv1x1, numpy_conv3x3
from reference import max_rel_diff
from test_resume import FailsLate, tiles_to_resume

import chunkseg
from chunkseg.cli import main
from chunkseg.engine.settings import _setup
from chunkseg.errors import InvalidTypeError, InvalidValueError

KW = dict(tile=32, overlap=8, chunks=40, outputs="logits,probabilities,labels")
VARS = ("logits", "probabilities", "labels")
RNG = np.random.default_rng(11)


def _tzyx():
    """A (t=2, z=3, y, x) uint8 stack, as an xarray.DataArray with a ``z`` coordinate."""
    a = (RNG.random((2, 3, 70, 90)) * 255).astype(np.uint8)
    return xr.DataArray(a, dims=("t", "z", "y", "x"), coords={"z": [0.5, 1.0, 1.5]})


def _ngff_like(path, a):
    """``a`` (t, c, z, y, x) as a Zarr array with those dimension names (as OME-Zarr)."""
    z = zarr.create_array(str(path), shape=a.shape, dtype=a.dtype, chunks=(1, 1, 1, 40, 40),
                          dimension_names=("t", "c", "z", "y", "x"))
    z[...] = a
    return str(path)


def _assert_planes(ds, planes, lead):
    """Every variable of the stacked ``ds`` equals, plane by plane, the 2-D result in
    ``planes`` (index -> dataset), exactly."""
    for index, ref in planes.items():
        sel = dict(zip(lead, index, strict=True))
        for name in ref.data_vars:
            got = ds[name].isel(sel).values
            np.testing.assert_array_equal(got, ref[name].values, err_msg=f"{name} {sel}")


def test_tzyx_stack_equals_the_2d_path_plane_by_plane(tmp_path):
    image = _tzyx()
    model = numpy_conv3x3()
    planes = {(t, z): chunkseg.predict(image.values[t, z], model, **KW)
              for t in range(2) for z in range(3)}
    ds = chunkseg.predict(image, model, **KW)
    assert ds.logits.dims == ("t", "z", "class", "y", "x")
    assert ds.labels.dims == ("t", "z", "y", "x")
    assert ds.logits.data.chunksize[:2] == (1, 1)  # one chunk per plane
    np.testing.assert_array_equal(ds.z.values, [0.5, 1.0, 1.5])  # the input's coordinate
    np.testing.assert_array_equal(ds.t.values, [0, 1])  # none: the planes' indices
    assert ds.attrs["stack"] == ["t", "z"]
    _assert_planes(ds, planes, ("t", "z"))
    out = chunkseg.predict_to_zarr(image, model, str(tmp_path / "out.zarr"), **KW)
    assert out.logits.dims == ("t", "z", "class", "y", "x")
    assert out.labels.dims == ("t", "z", "y", "x")
    _assert_planes(out, planes, ("t", "z"))
    np.testing.assert_array_equal(out.z.values, [0.5, 1.0, 1.5])
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group["logits"].chunks == (1, 1, 2, 40, 40)
    assert group["chunkseg/done"].shape == (2, 3, 2, 3)  # (t, z) x chunk grid, all marked
    assert group["chunkseg/done"][...].all()


def test_zyxc_zarr_stack_equals_the_2d_path_plane_by_plane(tmp_path):
    a = (RNG.random((4, 50, 66, 3)) * 255).astype(np.uint8)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=a.shape, dtype="u1",
                          chunks=(1, 25, 33, 3), dimension_names=("z", "y", "x", "c"))
    z[...] = a
    model = numpy_conv1x1()
    planes = {(i,): chunkseg.predict(a[i], model, **KW) for i in range(4)}
    ds = chunkseg.predict(str(tmp_path / "in.zarr"), model, **KW)
    assert ds.logits.dims == ("z", "class", "y", "x")
    np.testing.assert_array_equal(ds.z.values, np.arange(4))
    _assert_planes(ds, planes, ("z",))
    out = chunkseg.predict_to_zarr(str(tmp_path / "in.zarr"), model, str(tmp_path / "o.zarr"),
                                   **KW)
    _assert_planes(out, planes, ("z",))
    # each plane's blocks are read straight from the store (one Zarr selection), that plane's
    setup = _setup(str(tmp_path / "in.zarr"), model, tile=32, overlap=8, window="gaussian",
                   chunks=40, batch_size=8, outputs="labels", dtype="float32", device="cpu",
                   normalization=None, storage_options=None, array_name=None, mask=None,
                   kernel="numpy", classes=None, tta=None, torch_threads=None,
                   isel={"z": slice(1, None)})
    assert len(setup.planes) == 3
    for i, runner in enumerate(setup.planes):
        assert runner.reader.direct is not None
        np.testing.assert_array_equal(runner.reader.direct(5, 30, 7, 60), a[i + 1, 5:30, 7:60])


def test_each_plane_is_independent_of_the_chunking():
    image = _tzyx()
    model = numpy_conv3x3()
    a = chunkseg.predict(image, model, **dict(KW, chunks=40)).logits.values
    b = chunkseg.predict(image, model, **dict(KW, chunks=(24, 72))).logits.values
    for t in range(2):
        for z in range(3):
            assert max_rel_diff(a[t, z], b[t, z]) < 1e-6


def test_isel_gives_the_planes_of_the_stack(tmp_path):
    image = _tzyx()
    model = numpy_conv3x3()
    one = chunkseg.predict(image, model, isel={"t": 1, "z": 2}, **KW)
    assert one.logits.dims == ("class", "y", "x") and one.labels.dims == ("y", "x")
    _assert_planes(one, {(): chunkseg.predict(image.values[1, 2], model, **KW)}, ())
    part = chunkseg.predict(image, model, isel={"z": slice(1, 3)}, **KW)
    assert part.logits.dims == ("t", "z", "class", "y", "x")
    np.testing.assert_array_equal(part.z.values, [1.0, 1.5])  # the coordinate, selected
    _assert_planes(part, {(t, z - 1): chunkseg.predict(image.values[t, z], model, **KW)
                          for t in range(2) for z in (1, 2)}, ("t", "z"))
    # an OME-Zarr-like (t, c, z, y, x) Zarr array: without names' coordinates, the indices
    src = _ngff_like(tmp_path / "in.zarr", image.values[:, None])
    written = chunkseg.predict_to_zarr(src, model, str(tmp_path / "out.zarr"),
                                       isel={"z": slice(1, None, 1), "t": 0}, **KW)
    assert written.logits.dims == ("z", "class", "y", "x")
    np.testing.assert_array_equal(written.z.values, [1, 2])
    assert written.attrs["planes"] == "z=1:,t=0"
    _assert_planes(written, {(z - 1,): chunkseg.predict(image.values[0, z], model, **KW)
                             for z in (1, 2)}, ("z",))


def test_cli_planes_equal_the_plane_and_resume_keeps_them(tmp_path):
    image = _tzyx()
    src = _ngff_like(tmp_path / "in.zarr", image.values[:, None])
    out = tmp_path / "out.zarr"
    args = ["predict", src, str(out), "--model", "model_factories:numpy_conv3x3", "--tile",
            "32", "--overlap", "8", "--chunk", "40", "--outputs", "logits,labels",
            "--no-progress"]
    assert main(args + ["--planes", "z=2,t=1"]) == 0
    ds = chunkseg.open_output(str(out))
    assert ds.labels.dims == ("y", "x")
    ref = chunkseg.predict(image.values[1, 2], numpy_conv3x3(), **dict(KW, outputs="logits"))
    np.testing.assert_array_equal(ds.logits.values, ref.logits.values)
    assert main(args[:3] + ["--resume", "--no-progress"]) == 0  # the record's planes
    with pytest.raises(ValueError, match="planes .was 'z=2,t=1', now 'z=1,t=1'"):
        chunkseg.predict_to_zarr(src, numpy_conv3x3(), str(out), resume=True,
                                 isel={"z": 1, "t": 1}, **dict(KW, outputs="logits,labels"))


def _chunk_of(key: str, lead: int) -> tuple[int, ...]:
    """The (plane, chunk) a stored object belongs to: its plane's indices and its last two."""
    parts = key.split("/c/")[1].split("/")
    return tuple(int(p) for p in parts[:lead] + parts[-2:])


def _objects(root) -> dict[str, tuple[int, int]]:
    root = Path(root)
    out = {}
    for p in root.rglob("*"):
        rel = "/".join(p.relative_to(root).parts)
        if p.is_file() and "/c/" in rel and (rel.split("/")[0] in VARS
                                             or rel.startswith("chunkseg/done/")):
            st = p.stat()
            out[rel] = (st.st_mtime_ns, st.st_ino)
    return out


def test_interrupted_stack_resumes_per_plane_bit_identical(tmp_path):
    image = _tzyx()
    clean = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "clean.zarr"),
                                     **KW)
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="late tile"):  # 20 of 6 x 16 tiles, then it fails
        chunkseg.predict_to_zarr(image, FailsLate(limit=20), str(out), scheduler="sync",
                                 **dict(KW, batch_size=2))
    marks = zarr.open_group(str(out), mode="r")["chunkseg/done"][...]
    finished = {tuple(int(v) for v in ij) for ij in np.argwhere(marks == 1)}
    assert finished and len(finished) < marks.size
    untouched = [ij for ij in np.ndindex(2, 3) if not marks[ij].any()]
    assert untouched  # whole planes still to do
    before = _objects(out)
    counting = FailsLate(limit=10**9)
    resumed = chunkseg.predict_to_zarr(image, counting, str(out), resume=True, **KW)
    for name in VARS:
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)
    after = _objects(out)
    assert {_chunk_of(k, 2) for k in after} == set(np.ndindex(marks.shape))
    rewritten = [k for k, s in after.items() if _chunk_of(k, 2) in finished and before[k] != s]
    assert not rewritten
    missing = [k for k, s in after.items()
               if _chunk_of(k, 2) not in finished and before.get(k) == s]
    assert not missing
    plan = chunkseg.plan_tiles((70, 90), KW["tile"], KW["overlap"], KW["chunks"])
    per_plane = sum(tiles_to_resume(plan, {ij[2:] for ij in finished if ij[:2] == p})
                    for p in np.ndindex(2, 3))
    assert counting.tiles == per_plane + 1  # + the probe of the first tile
    assert zarr.open_group(str(out), mode="r")["chunkseg/done"][...].all()


def test_open_image_plane_errors_name_the_axis_length_and_fix():
    image = _tzyx()
    with pytest.raises(InvalidValueError, match=r"\('t', 2\), \('z', 3\)\] cannot be squeezed"
                       r".*isel=\{'t': 0\}.*--planes t=0,z=0"):
        chunkseg.open_image(image)
    with pytest.raises(InvalidValueError, match="axis 'z', which has length 3. Got z=3; use 0 "
                                                "to 2"):
        chunkseg.open_image(image, isel={"z": 3, "t": 0})
    with pytest.raises(InvalidValueError, match="at least one plane of axis 'z' .length 3.. "
                                                "Got z=5:9"):
        chunkseg.open_image(image, isel={"z": slice(5, 9)}, stack=True)
    with pytest.raises(InvalidValueError, match="dimension 'q', which the image does not "
                                                "have.*one of \\('t', 'z'\\)"):
        chunkseg.open_image(image, isel={"q": 0})
    with pytest.raises(InvalidValueError, match="other than y, x and c. Got y=0:"):
        chunkseg.open_image(image, isel={"y": slice(0, 10)}, stack=True)
    with pytest.raises(InvalidValueError, match="no names .shape \\(3, 20, 20\\).*z=0"):
        chunkseg.open_image(np.zeros((3, 20, 20), np.uint8), isel={"z": 0})
    with pytest.raises(InvalidTypeError, match="`isel` must be a mapping"):
        chunkseg.open_image(image, isel=3)
    with pytest.raises(InvalidTypeError, match="int or a slice of ints. Got 'z': 1.5"):
        chunkseg.open_image(image, isel={"z": 1.5})
    with pytest.raises(InvalidValueError, match="positive step"):
        chunkseg.open_image(image, isel={"z": slice(None, None, -1)})


def test_plane_selection_of_every_axis_is_the_2d_image():
    image = _tzyx()
    arr = chunkseg.open_image(image, isel={"t": 1, "z": 0}, stack=True)
    assert arr.dims == ("y", "x", "c")
    np.testing.assert_array_equal(arr.values[..., 0], image.values[1, 0])


def test_ome_stack_is_refused_before_writing(tmp_path):
    pytest.importorskip("ome_zarr")  # not in the lowest-versions environment
    with pytest.raises(InvalidValueError, match="stack of planes is not written in the OME "
                                                "layout.*\\('t', 'z'\\).*isel"):
        chunkseg.predict_to_zarr(_tzyx(), numpy_conv3x3(), str(tmp_path / "o.zarr"), ome=True,
                                 **KW)
    assert not (tmp_path / "o.zarr" / "logits").exists()


@pytest.mark.parametrize("text", ["z", "z=a", "z=1:2:3:4", "=1", "z=1,z=2"])
def test_cli_refuses_bad_planes(text, capsys):
    with pytest.raises(SystemExit):
        main(["plan", "100x100", "--planes", text])
    assert "--planes` must be NAME=INDEX or NAME=START:STOP" in capsys.readouterr().err


def test_commands_reading_an_output_refuse_a_stack(tmp_path):
    from chunkseg.viz.output_figures import figures

    store = str(tmp_path / "out.zarr")
    chunkseg.predict_to_zarr(_tzyx(), numpy_conv3x3(), store, **KW)
    fix = r"stack of planes with leading dims \('t', 'z'\) of lengths \(2, 3\).*--planes t=0,z=0"
    with pytest.raises(InvalidValueError, match="`store` must be a 2-D output .* for "
                                                "chunkseg.label.*" + fix):
        chunkseg.label(store, cls=1)
    with pytest.raises(InvalidValueError, match="chunkseg.regions.*" + fix):
        chunkseg.regions(store, str(tmp_path / "t.parquet"), name="labels")
    with pytest.raises(InvalidValueError, match="`pred` must be a 2-D output.*" + fix):
        chunkseg.evaluate(store, np.zeros((70, 90), np.uint8))
    with pytest.raises(InvalidValueError, match="the figures.*" + fix):
        figures(store, tmp_path / "figs")
    assert not (tmp_path / "figs").exists() and not (tmp_path / "t.parquet").exists()
    # the output itself is untouched: nothing was added by the refused label run
    assert "instances" not in zarr.open_group(store, mode="r")


# random pixels under the threshold make objects larger than the overlap: warned, and beside
# the point here (the plane's result against the 2-D run's)
@pytest.mark.filterwarnings("ignore::chunkseg.errors.LargeObjectWarning")
def test_predict_instances_and_cli_planes_select_one_plane(tmp_path):
    from model_factories import threshold_instances

    image = _tzyx()
    src = _ngff_like(tmp_path / "in.zarr", image.values[:, None])
    ref = chunkseg.predict_instances(image.values[1, 2], threshold_instances(),
                                     str(tmp_path / "ref.zarr"), tile=32, overlap=8, chunks=40)
    got = chunkseg.predict_instances(src, threshold_instances(), str(tmp_path / "one.zarr"),
                                     tile=32, overlap=8, chunks=40, isel={"t": 1, "z": 2})
    assert ref.attrs["n_objects"] > 0
    np.testing.assert_array_equal(got.values, ref.values)
    assert main(["predict-instances", src, str(tmp_path / "cli.zarr"), "--model",
                 "model_factories:threshold_instances", "--tile", "32", "--overlap", "8",
                 "--chunk", "40", "--planes", "t=1,z=2", "--no-progress"]) == 0
    cli = zarr.open_group(str(tmp_path / "cli.zarr"), mode="r")
    np.testing.assert_array_equal(cli["instances"][...], ref.values)
    assert cli.attrs["planes"] == "t=1,z=2"
    with pytest.raises(InvalidValueError, match=r"\('z', 3\)\] cannot be squeezed"):
        chunkseg.predict_instances(src, threshold_instances(), str(tmp_path / "all.zarr"),
                                   tile=32, overlap=8, chunks=40, isel={"t": 0})


def test_rolling_window_runs_on_from_one_plane_to_the_next():
    """The write graph of a stack: plane p's first ``lag`` blocks wait for plane p - 1's last
    ``lag`` chunks (not every plane's first blocks at once), skipped chunks gate nothing."""
    from chunkseg.engine.to_zarr import _stack_graph

    image = xr.DataArray(np.zeros((3, 70, 90), np.uint8), dims=("z", "y", "x"))
    setup = _setup(image, numpy_conv3x3(), tile=32, overlap=8, window="gaussian", chunks=40,
                   batch_size=8, outputs="labels", dtype="float32", device="cpu",
                   normalization=None, storage_options=None, array_name=None, mask=None,
                   kernel="numpy", classes=None, tta=None, torch_threads=None)
    assert setup.runner.plan.chunk_grid == (2, 3)
    finished = {(0, 1, 2)}  # plane 0's last chunk was written before (a resume)
    dsk, folds = _stack_graph(setup, {}, None, np.dtype("float32"), "here", lag=2, token="t",
                              finished=finished)
    assert len(folds) == 3 * 6 - 1
    fold = {p: f"chunkseg-fold-t-{p}" for p in range(3)}  # one graph per plane

    def deps(plane, iy, ix):
        name = f"chunkseg-accumulate-t-{plane}"
        return {a for a in dsk[(name, iy, ix)][1:] if isinstance(a, tuple) and
                str(a[0]).startswith("chunkseg-fold")}

    blocks = [(iy, ix) for iy in range(2) for ix in range(3)
              if ("chunkseg-accumulate-t-0", iy, ix) in dsk]
    assert (0, 0) in blocks and (0, 1) in blocks and len(blocks) >= 4
    for plane in range(3):
        for iy, ix in blocks:
            p = iy * 3 + ix
            q = divmod((p - 2) % 6, 3)  # the chunk 2 blocks back, row-major, across planes
            owner = plane if p >= 2 else plane - 1
            if owner < 0 or (owner, *q) in finished:
                expected = set()  # the first plane starts at once; a finished chunk: no gate
            else:
                expected = {(fold[owner], 0, *q)}
            assert deps(plane, iy, ix) == expected, (plane, iy, ix)
    assert deps(1, 0, 0) == {(fold[0], 0, 1, 1)} and deps(1, 0, 1) == set()


def test_ngff_stack_keeps_its_planes_positions_and_units(tmp_path):
    """An OME-NGFF (t, c, z, y, x) image: the output's t and z are the NGFF scale and
    translation at the selected planes, with the axes' units; y and x as for a 2-D image."""
    a = (RNG.random((2, 1, 4, 50, 60)) * 255).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w")
    arr = group.create_array("0", shape=a.shape, dtype="u1", chunks=(1, 1, 1, 50, 60))
    arr[...] = a
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"},
            {"name": "z", "type": "space", "unit": "micrometer"},
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    transforms = [{"type": "scale", "scale": [30.0, 1.0, 2.0, 0.5, 0.5]},
                  {"type": "translation", "translation": [0.0, 0.0, 10.0, 0.0, 0.0]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": transforms}]}]}
    ds = chunkseg.predict(str(tmp_path / "in.ome.zarr"), numpy_conv3x3(),
                          isel={"z": slice(1, 4, 2)}, **KW)
    assert ds.labels.dims == ("t", "z", "y", "x")
    np.testing.assert_array_equal(ds.t.values, [0.0, 30.0])
    np.testing.assert_array_equal(ds.z.values, [12.0, 16.0])  # planes 1 and 3
    assert ds.t.attrs["units"] == "second" and ds.z.attrs["units"] == "micrometer"
    np.testing.assert_array_equal(ds.y.values[:2], [0.0, 0.5])
    _assert_planes(ds, {(t, i): chunkseg.predict(a[t, 0, z], numpy_conv3x3(), **KW)
                        for t in range(2) for i, z in enumerate((1, 3))}, ("t", "z"))
    out = chunkseg.predict_to_zarr(str(tmp_path / "in.ome.zarr"), numpy_conv3x3(),
                                   str(tmp_path / "out.zarr"), isel={"z": slice(1, 4, 2)}, **KW)
    np.testing.assert_array_equal(out.z.values, [12.0, 16.0])
    assert out.z.attrs["units"] == "micrometer"


@pytest.mark.slow  # importing torch: keeps the module in the fast tier's budget
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_torch_kernel_stack_equals_its_2d_planes(tmp_path, device):
    """The torch kernel (the chunk's outputs computed on the model's device) writes each plane
    as its 2-D run does."""
    torch = pytest.importorskip("torch")
    from model_factories import torch_conv1x1

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")

    a = (RNG.random((3, 50, 66, 3)) * 255).astype(np.uint8)
    image = xr.DataArray(a, dims=("z", "y", "x", "c"))
    kw = dict(KW, kernel="torch", device=device)
    out = chunkseg.predict_to_zarr(image, torch_conv1x1(device), str(tmp_path / "o.zarr"),
                                   **kw)
    assert out.attrs["kernel"] == "torch"
    planes = {}
    for i in range(3):
        planes[(i,)] = chunkseg.predict_to_zarr(a[i], torch_conv1x1(device),
                                                str(tmp_path / f"p{i}.zarr"), **kw)
    _assert_planes(out, planes, ("z",))
