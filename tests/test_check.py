"""chunkseg._check: the one copy of each argument rule that several entry points share."""

from __future__ import annotations

import numpy as np
import pytest

from chunkseg._check import (
    class_index_arg,
    class_names_arg,
    classes_arg,
    int_pair,
    is_int,
    label_map_arg,
    non_negative_int,
    object_class,
    parse_classes,
    parse_ignore,
    parse_label_map,
    positive_int,
)
from chunkseg.errors import InvalidTypeError, InvalidValueError


def test_is_int_refuses_bools_and_floats():
    assert is_int(3) and is_int(np.int16(3)) and is_int(np.uint64(0))
    for bad in (True, np.True_, 2.0, "2", None, [2]):
        assert not is_int(bad)


def test_positive_int():
    assert positive_int(np.int64(3), "n") == 3 and type(positive_int(np.int64(3), "n")) is int
    for bad, exc in [(True, InvalidTypeError), (False, InvalidTypeError), (2.0, InvalidTypeError),
                     ("8", InvalidTypeError), (None, InvalidTypeError),
                     (0, InvalidValueError), (-1, InvalidValueError)]:
        with pytest.raises(exc, match=r"`batch_size` must be a positive int\. Got .*e\.g\. 8"):
            positive_int(bad, "batch_size", "Tiles per model call: e.g. 8.")


def test_non_negative_int():
    assert non_negative_int(0, "seed") == 0 and type(non_negative_int(np.uint8(5), "seed")) is int
    for bad, exc in [(True, InvalidTypeError), (1.0, InvalidTypeError), (None, InvalidTypeError),
                     (-1, InvalidValueError)]:
        with pytest.raises(exc, match=r"`seed` must be a non-negative int\. Got .*\. Use 0"):
            non_negative_int(bad, "seed", "Use 0.")


def test_int_pair_types_and_values():
    assert int_pair(256, "tile") == (256, 256)
    assert int_pair((256, 128), "tile") == (256, 128)
    assert int_pair([np.int32(4), 5], "tile") == (4, 5)
    assert int_pair(np.array([7, 9]), "tile") == (7, 9)
    assert all(type(v) is int for v in int_pair(np.int64(3), "tile"))
    assert int_pair(-3, "shift") == (-3, -3)  # no range without `minimum`
    for bad in (True, np.True_, 2.5, "12", b"12", None, (1,), (1, 2, 3), (1, 2.0), (True, 1),
                {"y": 1}):
        with pytest.raises(InvalidTypeError,
                           match=r"`tile` must be an int or a pair of ints \(y, x\)\. Got"):
            int_pair(bad, "tile")
    with pytest.raises(InvalidValueError, match=r"`tile` must be positive\. Got \(0, 4\)"):
        int_pair((0, 4), "tile", minimum=1)
    with pytest.raises(InvalidValueError, match=r"`overlap` must be >= 0\. Got -1\. Use 0"):
        int_pair(-1, "overlap", minimum=0, fix="Use 0 for no overlap.")
    assert int_pair(0, "overlap", minimum=0) == (0, 0)
    with pytest.raises(InvalidTypeError, match=r"Got 'a'\. \(CLI: --tile\)"):
        int_pair("a", "tile", fix="(CLI: --tile)")


def test_class_names_arg():
    assert class_names_arg(["cell", "membrane"]) == ("cell", "membrane")
    assert class_names_arg(("a", "b"), count=2) == ("a", "b")
    assert class_names_arg(["a", "a"]) == ("a", "a")  # distinct only against a count
    with pytest.raises(InvalidTypeError, match=r"`classes` must be a sequence of str.*"
                                               r"classes=\['class0', 'class1', 'class2'\]"):
        class_names_arg("cell,membrane", count=3)
    for bad in (3, None, {"a": 0}):
        with pytest.raises(InvalidTypeError, match="`classes` must be a sequence of str"):
            class_names_arg(bad)
    for bad in (["a", ""], ["a", " "], ["a", 1], [None]):
        with pytest.raises(InvalidTypeError, match="`classes` must hold non-empty str names"):
            class_names_arg(bad)
    with pytest.raises(InvalidValueError, match="`names` must name at least one class"):
        class_names_arg([], "names")
    with pytest.raises(InvalidValueError, match="`classes` must hold 2 distinct names"):
        class_names_arg(["a", "a"], count=2)
    with pytest.raises(InvalidValueError, match="`classes` must hold 3 distinct names.*Got 2"):
        class_names_arg(["a", "b"], count=3)


def test_classes_arg():
    assert classes_arg(None) is None
    assert classes_arg(np.uint8(3)) == 3
    assert classes_arg(["a", "b"]) == ("a", "b")
    for bad in (2.5, "2", True, {"a"}):
        with pytest.raises(InvalidTypeError, match="`classes` must be"):
            classes_arg(bad)
    with pytest.raises(InvalidValueError, match=r"`k` must be a positive int\. Got 0\. Pass"):
        classes_arg(0, "k")
    with pytest.raises(InvalidValueError, match="`classes` must name at least one class"):
        classes_arg([])


def test_class_index_arg_by_index_and_by_name():
    isbi = ("cell", "membrane")
    for value, want in [(0, 0), (1, 1), (np.int64(1), 1), (np.uint8(0), 0), ("cell", 0),
                        ("membrane", 1), ("0", 0), ("1", 1)]:
        got = class_index_arg(value, isbi)
        assert got == want and type(got) is int, (value, got)
    # a name wins over a digit string: here class "1" is index 0
    assert class_index_arg("1", ["1", "0"]) == 0 and class_index_arg("0", ["1", "0"]) == 1
    assert class_index_arg("2", ["1", "0", "x"]) == 2  # no class named "2": the index
    assert class_index_arg("1", ["0", "1"]) == 1  # unnamed classes: name and index agree


def test_class_index_arg_refuses_bad_classes():
    isbi = ("cell", "membrane")
    for bad in (True, np.True_, 1.0, b"cell", ["cell"], {"cell": 0}):
        with pytest.raises(InvalidTypeError, match=r"`cls` must be a class index \(int\) or a "
                                                   r"class name \(str\)\. Got .* \(CLI: --class\)"):
            class_index_arg(bad, isbi, fix="(CLI: --class)")
    for bad in (2, -1, "2", "-1", "Cell", " cell", "nucleus", "", "1.0", "\u00b2"):
        with pytest.raises(InvalidValueError) as err:
            class_index_arg(bad, isbi, "klass", fix="(CLI: --class)")
        msg = str(err.value)
        assert msg.startswith("`klass` must be a class of the output: an index 0 to 1 or a "
                              "name in ['cell', 'membrane']. Got "), msg
        assert repr(bad) in msg and msg.endswith("(CLI: --class)"), msg
    with pytest.raises(InvalidValueError, match="which has none"):
        class_index_arg(0, ())


def test_object_class_default():
    from chunkseg.models import model_defaults

    shipped = model_defaults("isbi2012-unet")["class_names"]
    assert tuple(shipped) == ("cell", "membrane")
    assert object_class(shipped) == 0  # the shipped ISBI U-Net: the cell, not the membrane
    assert object_class(["Membrane", "cell"]) == 1  # case-insensitive
    assert object_class(["background", "BOUNDARY", "nucleus", "edge"]) == 2
    assert object_class(["bg", "borders", "edges", "tumour"]) == 3
    assert object_class(["0", "1", "2"]) == 1  # unnamed: class 1, as before
    assert object_class(["0"]) == 0  # one unnamed class
    assert object_class(["nucleus"]) == 0
    assert object_class(["1", "0"]) == 0  # names, not the default 0, 1: "1" is an object name
    # None in class_index_arg is this rule
    assert class_index_arg(None, ["background", "cell"]) == 1
    assert class_index_arg(None, ["0", "1"]) == 1
    with pytest.raises(InvalidValueError, match=r"`cls` has no default here: every class name "
                                                r"of \['background', 'membrane'\] is background"
                                                r"-like.*pass the class of the objects, a name "
                                                r"or an index 0 to 1\. \(CLI: --class\)"):
        class_index_arg(None, ["background", "membrane"], fix="(CLI: --class)")
    with pytest.raises(InvalidValueError, match="has none"):
        object_class([])


def test_label_map_arg():
    assert label_map_arg(None) is None
    got = label_map_arg({np.uint8(255): np.int64(0), 0: 1})
    assert got == {255: 0, 0: 1} and all(type(k) is int and type(v) is int for k, v in got.items())
    assert list(got) == [255, 0]  # the order given
    assert label_map_arg({0.5: 1}, real_keys=True) == {0.5: 1}
    assert label_map_arg({0: 2}, classes=3) == {0: 2}
    with pytest.raises(InvalidTypeError, match=r"`label_map` must be a mapping.*\{255: 0, 0: 1\}"
                                               r".*Got list"):
        label_map_arg([(0, 1)])
    with pytest.raises(InvalidValueError, match="`label_map` must map at least one value"):
        label_map_arg({})
    for bad in ({"255": 0}, {255: "0"}, {True: 0}, {0: True}, {0.5: 1}, {0: 1.0}):
        with pytest.raises(InvalidTypeError, match=r"`label_map` must map stored values \(ints\)"):
            label_map_arg(bad)
    with pytest.raises(InvalidTypeError, match=r"stored values \(numbers\)"):
        label_map_arg({"x": 1}, real_keys=True)
    with pytest.raises(InvalidValueError, match="`label_map` values must be class indices >= 0"):
        label_map_arg({0: -100})
    # one message for every caller's rule: "must map to classes" and "class indices"
    with pytest.raises(InvalidValueError, match=r"`gt_map` must map to classes in \[0, classes\) "
                                                r"= \[0, 3\).*class indices below 3.*Got 0: 5"):
        label_map_arg({0: 5}, "gt_map", classes=3)


def test_parse_label_map():
    assert parse_label_map("255:0, 0:1") == {255: 0, 0: 1}
    assert parse_label_map("-1:2") == {-1: 2}
    for bad in ("255-0", "255:a", "", "1:0,", "a:1"):
        with pytest.raises(InvalidValueError, match="`label_map` must be comma-separated "
                                                    "STORED:CLASS integer pairs"):
            parse_label_map(bad)
    with pytest.raises(InvalidValueError, match="`label_map` must map each stored value once"):
        parse_label_map("1:0,1:1")


def test_parse_classes_and_ignore():
    assert parse_classes(None) is None
    assert parse_classes(" 3 ") == 3
    assert parse_classes("cell, membrane") == ["cell", "membrane"]
    assert parse_classes("2a") == ["2a"]
    for bad in ("a,,b", "a,", ","):
        with pytest.raises(InvalidValueError, match="`classes` must be a number of classes or "
                                                    "comma-separated class names"):
            parse_classes(bad)
    assert parse_ignore(None) is None
    assert parse_ignore("255") == [255] and parse_ignore("254, 255") == [254, 255]
    for bad in ("a", "255,", "1.5"):
        with pytest.raises(InvalidValueError, match="`ignore` must be an integer"):
            parse_ignore(bad)


def test_every_batch_size_refuses_true(tmp_path):
    """Each public entry point that takes ``batch_size`` checks it with positive_int."""
    import chunkseg
    from chunkseg.evaluation.seams import seam_report
    from chunkseg.objects.tile_instances import predict_instances

    image = np.zeros((32, 32), np.uint8)
    plan = chunkseg.plan_tiles((64, 64), 32, 8, 32)
    with pytest.raises(InvalidTypeError, match=r"`batch_size` must be a positive int\. Got True"):
        plan.memory_per_task(batch_size=True)
    with pytest.raises(InvalidTypeError, match=r"`batch_size` must be a positive int\. Got True"):
        seam_report(image, "model_factories:numpy_conv3x3", tile=16, overlap=4, batch_size=True)
    with pytest.raises(InvalidTypeError, match=r"`batch_size` must be a positive int\. Got True"):
        predict_instances(image, "model_factories:numpy_conv3x3", str(tmp_path / "i.zarr"),
                          tile=16, overlap=4, batch_size=True)
    with pytest.raises(InvalidTypeError, match=r"`batch_size` must be a positive int\. Got True"):
        chunkseg.predict(image, "model_factories:numpy_conv3x3", tile=16, overlap=4,
                         batch_size=True)
    assert not (tmp_path / "i.zarr").exists()
