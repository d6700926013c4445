"""Choosing the class of the objects by name or by index (chunkseg.label, its CLI, the figures),
and label's default class: the first class whose name is not background-like."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidTypeError, InvalidValueError

MODEL = "model_factories:numpy_two_class"  # class 1 where the pixel is dark (x < 127.5)


def _image(shape=(120, 140), seed=0):
    from skimage.data import binary_blobs

    blobs = binary_blobs(max(shape), blob_size_fraction=0.05, volume_fraction=0.55, rng=seed)
    return np.where(blobs[: shape[0], : shape[1]], 40, 220).astype(np.uint8)  # dark = class 1


def _output(tmp_path, classes, name="out.zarr", image=None):
    out = tmp_path / name
    chunkseg.predict_to_zarr(_image() if image is None else image, MODEL, str(out), tile=32,
                             overlap=8, chunks=48, outputs="labels", classes=classes)
    return out


def _components(out, cls: int) -> np.ndarray:
    """The reference: scipy.ndimage.label of the whole ``labels == cls``."""
    ref, n = ndimage.label(zarr.open_group(str(out))["labels"][...] == cls)
    assert n > 10  # both classes have many objects
    return ref


def test_label_by_name_equals_label_by_index(tmp_path):
    out = _output(tmp_path, ["cell", "membrane"])
    for cls, index in [("cell", 0), (0, 0), ("0", 0), (np.int64(0), 0),
                       ("membrane", 1), (1, 1), ("1", 1)]:
        ids = chunkseg.label(str(out), cls=cls, overwrite=True)
        np.testing.assert_array_equal(ids.values, _components(out, index), err_msg=repr(cls))
        assert ids.attrs["class"] == index
    assert np.array_equal(_components(out, 0) > 0, ~(_components(out, 1) > 0))  # 2 classes


@pytest.mark.parametrize("classes, want", [
    (["cell", "membrane"], 0),  # the shipped ISBI U-Net's names: the cells, not the membrane
    (["Background", "nucleus"], 1),
    (["membrane", "cell"], 1),
    (None, 1),  # unnamed classes ("0", "1"): class 1, as before
])
def test_default_class_is_the_object_class(tmp_path, classes, want):
    out = _output(tmp_path, classes)
    ids = chunkseg.label(str(out))
    assert ids.attrs["class"] == want
    np.testing.assert_array_equal(ids.values, _components(out, want))


def test_no_default_when_every_class_is_background_like(tmp_path):
    out = _output(tmp_path, ["background", "boundary"])
    with pytest.raises(InvalidValueError, match=r"`cls` has no default here.*\['background', "
                                                r"'boundary'\].*\(CLI: --class NAME"):
        chunkseg.label(str(out))
    assert "instances" not in zarr.open_group(str(out))  # nothing written
    ids = chunkseg.label(str(out), cls="boundary")
    np.testing.assert_array_equal(ids.values, _components(out, 1))


def test_bad_class_names_the_classes(tmp_path):
    out = _output(tmp_path, ["cell", "membrane"])
    for bad in ("nucleus", 2, "2", -1, "Cell"):
        with pytest.raises(InvalidValueError, match=r"`cls` must be a class of the output: an "
                                                    r"index 0 to 1 or a name in \['cell', "
                                                    r"'membrane'\]\. Got "):
            chunkseg.label(str(out), cls=bad)
    for bad in (1.0, True):
        with pytest.raises(InvalidTypeError, match=r"`cls` must be a class index \(int\) or a "
                                                   r"class name \(str\)"):
            chunkseg.label(str(out), cls=bad)
    assert "instances" not in zarr.open_group(str(out))


def test_output_without_class_names_takes_indices(tmp_path):
    """An output whose ``class`` coordinate is missing: classes "0", "1"..., default 1."""
    out = _output(tmp_path, ["cell", "membrane"])
    from chunkseg.outputs._manifest import consolidate

    group = zarr.open_group(str(out), mode="r+")
    del group["class"]
    consolidate(group)
    ids = chunkseg.label(str(out))
    assert ids.attrs["class"] == 1
    np.testing.assert_array_equal(ids.values, _components(out, 1))
    np.testing.assert_array_equal(chunkseg.label(str(out), cls="0", overwrite=True).values,
                                  _components(out, 0))
    with pytest.raises(InvalidValueError, match=r"name in \['0', '1'\]\. Got 'cell'"):
        chunkseg.label(str(out), cls="cell", overwrite=True)


def test_cli_class_by_name_and_by_index_give_identical_instances(tmp_path, capsys):
    image = _image(seed=3)
    a = _output(tmp_path, ["cell", "membrane"], "a.zarr", image)
    b = _output(tmp_path, ["cell", "membrane"], "b.zarr", image)
    c = _output(tmp_path, ["cell", "membrane"], "c.zarr", image)
    assert main(["label", str(a), "--class", "cell", "--no-progress"]) == 0
    assert "objects of class 0" in capsys.readouterr().out
    assert main(["label", str(b), "--class", "0", "--no-progress"]) == 0
    assert main(["label", str(c), "--no-progress"]) == 0  # the default: cell
    got = [zarr.open_group(str(o))["instances"][...] for o in (a, b, c)]
    np.testing.assert_array_equal(got[0], _components(a, 0))
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_array_equal(got[2], got[0])
    capsys.readouterr()
    assert main(["label", str(a), "--class", "membrane", "--overwrite", "--no-progress"]) == 0
    np.testing.assert_array_equal(zarr.open_group(str(a))["instances"][...], _components(a, 1))
    capsys.readouterr()
    assert main(["label", str(a), "--class", "nucleus", "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "`--class` must be a class of the output" in err and "['cell', 'membrane']" in err
    assert "'nucleus'" in err and "--class" in err, err


def test_figures_take_class_names(tmp_path):
    """The figures' ``cls`` goes through the same resolver; default the object class."""
    from chunkseg import viz

    image = _image(seed=5)
    out = _output(tmp_path, ["cell", "membrane"], image=image)
    by_name = viz.tile_components(str(out), image, MODEL, cls="membrane")
    by_index = viz.tile_components(str(out), image, MODEL, cls=1)
    default = viz.tile_components(str(out), image, MODEL)  # no instances: the cells
    cells = viz.tile_components(str(out), image, MODEL, cls=0)
    assert len(by_name) == len(by_index) == len(default) > 1
    for n, i, d, c in zip(by_name, by_index, default, cells):
        np.testing.assert_array_equal(n["components"], i["components"])
        np.testing.assert_array_equal(d["components"], c["components"])
    assert any(not np.array_equal(n["components"], c["components"])
               for n, c in zip(by_name, cells))
    with pytest.raises(InvalidValueError, match=r"`cls` must be a class of the output.*"
                                                r"\(CLI: --class\)"):
        viz.tile_components(str(out), image, MODEL, cls="nucleus")
    chunkseg.label(str(out), cls="membrane")  # the instances' class is now the default
    for n, d in zip(by_name, viz.tile_components(str(out), image, MODEL)):
        np.testing.assert_array_equal(n["components"], d["components"])
