"""Argument checks shared by several entry points (one copy of each rule).

Each function checks one kind of argument and returns it in its canonical form, or raises
:class:`~chunkseg.errors.InvalidTypeError` (a wrong type) or
:class:`~chunkseg.errors.InvalidValueError` (a wrong value) with a message that names the
parameter, the rule, the value and the fix. ``True``/``False`` are never integers here.

The ``parse_*`` functions read the text form of the same arguments (the command line's
``--classes 2``, ``--label-map 255:0,0:1``, ``--ignore 255``) and hand it to the rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from .errors import InvalidTypeError, InvalidValueError

__all__ = ["positive_int", "non_negative_int", "int_pair", "class_names_arg", "classes_arg",
           "class_index_arg", "object_class", "BACKGROUND_NAMES", "label_map_arg",
           "parse_classes", "parse_label_map", "parse_ignore", "is_int", "isel_arg",
           "parse_planes", "planes_text", "isel_attrs"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (``True``/``False`` are not)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _tail(fix: str) -> str:
    return f" {fix}" if fix else ""


def positive_int(value, name: str, fix: str = "") -> int:
    """``value`` as an ``int`` when it is an integer of at least 1.

    Parameters
    ----------
    value : object
        The argument to check.
    name : str
        Its name, for the message (e.g. ``"batch_size"``).
    fix : str, optional
        A sentence appended to the message (e.g. the CLI option or the default).

    Returns
    -------
    int

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not an integer (``True``/``False`` are not).
    chunkseg.errors.InvalidValueError
        If it is below 1.
    """
    return _int_from(value, name, 1, fix)


def non_negative_int(value, name: str, fix: str = "") -> int:
    """``value`` as an ``int`` when it is an integer of at least 0 (a seed, an epoch number).

    Parameters
    ----------
    value, name, fix
        As :func:`positive_int`.

    Returns
    -------
    int

    Raises
    ------
    chunkseg.errors.InvalidTypeError, chunkseg.errors.InvalidValueError
        As :func:`positive_int`: a non-integer ``value`` (``True``/``False`` are not integers),
        a negative one.
    """
    return _int_from(value, name, 0, fix)


def _int_from(value, name: str, minimum: int, fix: str) -> int:
    """The rule of :func:`positive_int` (``minimum`` 1) and :func:`non_negative_int` (0)."""
    tail = _tail(fix)
    rule = "a positive int" if minimum == 1 else "a non-negative int"
    if not is_int(value):
        raise InvalidTypeError(f"`{name}` must be {rule}. Got {value!r}.{tail}")
    if value < minimum:
        raise InvalidValueError(f"`{name}` must be {rule}. Got {value!r}.{tail}")
    return int(value)


def int_pair(value: Any, name: str, *, minimum: int | None = None,
             fix: str = "") -> tuple[int, int]:
    """``value`` (an int for both axes, or a ``(y, x)`` pair) as a tuple of two Python ints.

    The one rule for tile, overlap, chunk, shard, stride and margin sizes.

    Parameters
    ----------
    value : int or sequence of 2 ints
        One value for both axes, or one per axis in ``(y, x)`` order; numpy integers count.
    name : str
        The parameter's name, for the message (e.g. ``"tile"``).
    minimum : int, optional
        The smallest value allowed on each axis (1: positive, 0: non-negative). Default: any.
    fix : str, optional
        A sentence appended to the message (e.g. the CLI option).

    Returns
    -------
    tuple of 2 int
        ``(y, x)``.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not an integer or a sequence of two integers (``True``/``False`` and
        floats are not integers).
    chunkseg.errors.InvalidValueError
        If an axis is below ``minimum``.
    """
    tail = _tail(fix)
    if is_int(value):
        pair = (int(value), int(value))
    else:
        try:
            items = None if isinstance(value, str | bytes | bool | np.bool_) else tuple(value)
        except TypeError:
            items = None
        if items is None or len(items) != 2 or not all(is_int(v) for v in items):
            raise InvalidTypeError(
                f"`{name}` must be an int or a pair of ints (y, x). Got {value!r}.{tail}")
        pair = (int(items[0]), int(items[1]))
    if minimum is not None and min(pair) < minimum:
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise InvalidValueError(f"`{name}` must be {rule}. Got {value!r}.{tail}")
    return pair


def class_names_arg(value: Any, name: str = "classes", *, count: int | None = None,
                fix: str = "") -> tuple[str, ...]:
    """``value`` as a tuple of class names, one non-empty ``str`` per class.

    Parameters
    ----------
    value : sequence of str
        The names (a list or tuple; a single ``str`` is not a sequence of names).
    name : str, default "classes"
        The parameter's name, for the message.
    count : int, optional
        The number of classes the names must match; they must then also be distinct.
    fix : str, optional
        A sentence appended to the type message (e.g. the CLI option).

    Returns
    -------
    tuple of str

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not a sequence, is a ``str``, or holds anything but non-empty strings.
    chunkseg.errors.InvalidValueError
        If it is empty, or (with ``count``) does not hold ``count`` distinct names.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        example = [f"class{i}" for i in range(count or 2)]
        raise InvalidTypeError(
            f"`{name}` must be a sequence of str, one name per class. Got {value!r}; use e.g. "
            f"{name}={example!r}{_tail(fix)}")
    names = tuple(value)
    if not names:
        raise InvalidValueError(f"`{name}` must name at least one class. Got an empty "
                                "sequence; pass None to use the default names.")
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidTypeError(
            f"`{name}` must hold non-empty str names. Got {value!r}; name every class.")
    if count is not None and (len(names) != count or len(set(names)) != count):
        raise InvalidValueError(
            f"`{name}` must hold {count} distinct names, one per class of the model's output "
            f"(it has {count} classes). Got {len(names)} names {list(names)!r}; give {count} "
            "distinct names.")
    return names


def classes_arg(value: Any, name: str = "classes") -> int | tuple[str, ...] | None:
    """``classes`` given as a number of classes or as their names.

    Parameters
    ----------
    value : None, int or sequence of str
        ``K``, or ``K`` class names.
    name : str, default "classes"
        The parameter's name, for the message.

    Returns
    -------
    None, int or tuple of str
        None when ``value`` is None; ``K`` as an ``int``; the names as :func:`class_names_arg`.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is of none of these types (a float, a ``str``...).
    chunkseg.errors.InvalidValueError
        If ``K`` is below 1 or the sequence is empty.
    """
    if value is None:
        return None
    if is_int(value):
        return positive_int(value, name, "Pass the number of classes (e.g. 2) or their names.")
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidTypeError(f"`{name}` must be None, a positive int or a sequence of class "
                               f"names. Got {type(value).__name__} {value!r}.")
    return class_names_arg(value, name)


BACKGROUND_NAMES = frozenset({"background", "bg", "membrane", "membranes", "boundary",
                              "boundaries", "border", "borders", "edge", "edges"})
"""Class names (compared case-insensitively) that :func:`object_class` does not take as the
objects: the background, and the thin separating classes (the membrane of the ISBI 2012 U-Net,
the boundary class of boundary-aware nucleus models)."""


def _unnamed(names: Sequence[str]) -> bool:
    """Whether the names are only the default ``"0"``, ``"1"``, ... of a model without names."""
    return list(names) == [str(i) for i in range(len(names))]


def object_class(class_names: Sequence[str], name: str = "cls", fix: str = "") -> int:
    """The default class of the objects: the first class whose name is not background-like.

    Parameters
    ----------
    class_names : sequence of str
        The ``K`` class names, in class order (an output's ``class`` coordinate).
    name, fix : str, optional
        The parameter's name and a sentence appended to the message, as
        :func:`class_index_arg`.

    Returns
    -------
    int
        For classes without names (``"0"``, ``"1"``, ...): class 1 (class 0 is usually the
        background), or 0 when there is one class. Otherwise the index of the first class whose
        name, stripped and lower-cased, is not in :data:`BACKGROUND_NAMES` (for the shipped ISBI
        U-Net's ``["cell", "membrane"]``: 0, the cell).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If there are no classes, or every name is background-like (no class is the objects':
        pass it explicitly).
    """
    names = [str(n) for n in class_names]
    if not names:
        raise InvalidValueError(f"`{name}` needs the classes of the output, which has none. "
                                f"Got class names [].{_tail(fix)}")
    if _unnamed(names):
        return 1 if len(names) > 1 else 0
    for i, n in enumerate(names):
        if n.strip().lower() not in BACKGROUND_NAMES:
            return i
    raise InvalidValueError(
        f"`{name}` has no default here: every class name of {names!r} is background-like "
        f"({', '.join(sorted(BACKGROUND_NAMES))}), so no class is the objects'. Got "
        f"{name}=None; pass the class of the objects, a name or an index 0 to "
        f"{len(names) - 1}.{_tail(fix)}")


def class_index_arg(value: Any, class_names: Sequence[str], name: str = "cls",
                    fix: str = "") -> int:
    """``value`` (a class given by index or by name) as the class index, ``0 <= i < K``.

    The one rule for choosing a class (``chunkseg label --class``, ``chunkseg.label(cls=...)``,
    the figures' ``cls``): the command line passes its text unchanged, the API takes both.

    Parameters
    ----------
    value : None, int or str
        An int index (numpy integers count; ``True``/``False`` do not); a ``str`` that is one of
        ``class_names`` (exact match: ``"cell"``); a ``str`` of ASCII digits, the index, when no
        class has that name (``"0"``); or None: :func:`object_class`, the first class whose name
        is not background-like (class 1 for unnamed classes).
    class_names : sequence of str
        The ``K`` class names, in class order (an output's ``class`` coordinate; ``"0"``,
        ``"1"``, ... where the model has no names).
    name : str, default "cls"
        The parameter's name, for the message.
    fix : str, optional
        A sentence appended to the message (e.g. the CLI option).

    Returns
    -------
    int
        The class index, a Python ``int`` in ``0..K-1``.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not None, an int or a ``str`` (a float, a bool, bytes...).
    chunkseg.errors.InvalidValueError
        If it is an index outside ``0..K-1`` or a ``str`` that is neither a class name nor such
        an index; for None, as :func:`object_class`.
    """
    names = [str(n) for n in class_names]
    if value is None:
        return object_class(names, name, fix)
    if is_int(value):
        index = int(value)
    elif isinstance(value, str):
        if value in names:
            return names.index(value)
        index = int(value) if value.isascii() and value.isdigit() else -1
    else:
        raise InvalidTypeError(
            f"`{name}` must be a class index (int) or a class name (str). Got "
            f"{type(value).__name__} {value!r}.{_tail(fix)}")
    if not 0 <= index < len(names):
        valid = (f"an index 0 to {len(names) - 1} or a name in {names!r}" if names
                 else "a class of it, which has none")
        raise InvalidValueError(
            f"`{name}` must be a class of the output: {valid}. Got {value!r}; pass one of "
            f"them.{_tail(fix)}")
    return index


def label_map_arg(value: Any, name: str = "label_map", *, classes: int | None = None,
              real_keys: bool = False) -> dict[Any, int] | None:
    """A map of stored label values to class indices, e.g. ``{255: 0, 0: 1}`` (ISBI 2012).

    Parameters
    ----------
    value : mapping or None
        Stored value -> class index. At least one entry; keys are integers, values integer
        class indices ``>= 0``.
    name : str, default "label_map"
        The parameter's name, for the message.
    classes : int, optional
        The number of classes ``K``, when known: every value must then be below it.
    real_keys : bool, default False
        Also take real-number keys (stored float labels); else the keys must be integers.

    Returns
    -------
    dict or None
        None for None; else a new dict with ``int`` values (and ``int`` keys for integer
        keys), in the order given.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not a mapping, a key is not an integer (a number with
        ``real_keys``), or a value is not an integer.
    chunkseg.errors.InvalidValueError
        If the map is empty, a value is negative or (with ``classes``) not below ``classes``.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidTypeError(
            f"`{name}` must be a mapping of stored value -> class index, e.g. {{255: 0, 0: 1}}. "
            f"Got {type(value).__name__}.")
    if not value:
        raise InvalidValueError(f"`{name}` must map at least one value. Got {{}}; pass None to "
                                "use the stored values as classes.")
    out: dict[Any, int] = {}
    for key, cls in value.items():
        key_ok = is_int(key) or (real_keys and isinstance(key, Real) and not isinstance(key, bool))
        if not key_ok or not is_int(cls):
            keys = "numbers" if real_keys else "ints"
            raise InvalidTypeError(
                f"`{name}` must map stored values ({keys}) to int class indices. Got "
                f"{key!r}: {cls!r}; e.g. {{255: 0, 0: 1}} for the ISBI 2012 labels.")
        if cls < 0:
            raise InvalidValueError(
                f"`{name}` values must be class indices >= 0. Got {key!r}: {cls!r}; leave "
                "values to ignore out of the map.")
        if classes is not None and cls >= classes:
            raise InvalidValueError(
                f"`{name}` must map to classes in [0, classes) = [0, {classes}): its values "
                f"must be class indices below {classes}. Got {key}: {cls}; pass a larger "
                "`classes` or fix the map.")
        out[int(key) if is_int(key) else key] = int(cls)
    return out


def parse_label_map(text: str) -> dict[int, int]:
    """``"255:0,0:1"`` -> ``{255: 0, 0: 1}`` (the CLI's ``--label-map``).

    Parameters
    ----------
    text : str
        Comma-separated ``STORED:CLASS`` integer pairs.

    Returns
    -------
    dict of int to int

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If ``text`` is not comma-separated ``STORED:CLASS`` integer pairs, or a value repeats.
    """
    out: dict[int, int] = {}
    for part in str(text).split(","):
        key, sep, value = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            k, v = int(key), int(value)
        except ValueError:
            raise InvalidValueError(
                "`label_map` must be comma-separated STORED:CLASS integer pairs, e.g. "
                f"255:0,0:1. Got {text!r}.") from None
        if k in out:
            raise InvalidValueError(f"`label_map` must map each stored value once. Got {k} twice "
                                    f"in {text!r}.")
        out[k] = v
    return out


def parse_classes(text: str | None) -> int | list[str] | None:
    """The CLI's ``--classes``: ``"3"`` -> 3, ``"cell,membrane"`` -> ``["cell", "membrane"]``.

    Parameters
    ----------
    text : str or None
        A number of classes, or class names separated by commas.

    Returns
    -------
    None, int or list of str

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If a name is empty (``"a,,b"``).
    """
    if text is None:
        return None
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise InvalidValueError("`classes` must be a number of classes or comma-separated class "
                                f"names, e.g. 2 or cell,membrane. Got {text!r}.")
    return names


def parse_ignore(text: str | None, name: str = "ignore") -> list[int] | None:
    """The CLI's ``--ignore``: ``"255"`` -> ``[255]``, ``"254,255"`` -> ``[254, 255]``.

    Parameters
    ----------
    text : str or None
        One integer, or several separated by commas.
    name : str, default "ignore"
        The option the error names (``--truth-class`` reads the same form).

    Returns
    -------
    None or list of int

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If a part is not an integer.
    """
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InvalidValueError(f"`{name}` must be an integer ground-truth value or several, "
                                f"comma-separated, e.g. 255. Got {text!r}.") from None


def isel_arg(isel: Any) -> dict[str, int | slice] | None:
    """``isel`` (plane selection) checked for its form: None, or a mapping of dimension names
    (str) to an int or a slice of ints with a positive step. The axes (compared as
    :func:`chunkseg.open_image` reads dims: in lower case) and their lengths are checked when
    the image's axes are read.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``isel`` is not a mapping, a key is not a str, or a value is neither an int nor a
        slice of ints.
    chunkseg.errors.InvalidValueError
        If a slice's step is not positive.
    """
    if isel is None:
        return None
    if not isinstance(isel, Mapping):
        raise InvalidTypeError(
            "`isel` must be a mapping of dimension names to an index or a slice, e.g. "
            f"{{'z': 10}} or {{'z': slice(10, 20)}} (CLI: --planes z=10:20). Got {isel!r}.")
    out: dict[str, int | slice] = {}
    for key, value in isel.items():
        if not isinstance(key, str):
            raise InvalidTypeError(f"`isel` keys must be dimension names (str). Got {key!r} in "
                                   f"{isel!r}; e.g. {{'z': 10}}.")
        bounds = (value.start, value.stop, value.step) if isinstance(value, slice) else (value,)
        if not all(b is None or is_int(b) for b in bounds) or bounds == (None,):
            raise InvalidTypeError(
                f"`isel` values must be an int or a slice of ints. Got {key!r}: {value!r}; "
                f"e.g. {{{key!r}: 10}} or {{{key!r}: slice(10, 20)}} (CLI: --planes {key}=10:20).")
        if isinstance(value, slice) and value.step is not None and value.step < 1:
            raise InvalidValueError(f"`isel` slices must have a positive step. Got {key!r}: "
                                    f"{value!r}; select the planes in increasing order.")
        if isinstance(value, slice):  # step 1 is the default: one form for one selection
            start, stop, step = (None if b is None else int(b) for b in bounds)
            out[key] = slice(start, stop, None if step == 1 else step)
        else:
            out[key] = int(value)
    return out


def _sel_text(sel: int | slice) -> str:
    """An ``isel`` value as ``--planes`` writes it (``10``, ``10:20``, ``::2``)."""
    if isinstance(sel, slice):
        parts = ["" if b is None else str(b) for b in (sel.start, sel.stop, sel.step)]
        return ":".join(parts[:2] if sel.step is None else parts)
    return str(sel)


def planes_text(isel: Mapping[str, int | slice]) -> str:
    """An ``isel`` as ``--planes`` writes it: ``"z=10:20,t=0"``."""
    return ",".join(f"{k}={_sel_text(v)}" for k, v in isel.items())


def isel_attrs(isel: Mapping[str, int | slice] | None) -> dict[str, Any]:
    """The ``planes`` attribute of an output (``{"planes": "z=10:20,t=0"}``), empty without
    ``isel``: a resumed run must select the same planes."""
    return {"planes": planes_text(isel)} if isel else {}


def parse_planes(text: str | None) -> dict[str, int | slice] | None:
    """``--planes`` text -> an ``isel`` mapping: ``"z=10"`` -> ``{"z": 10}``,
    ``"z=10:20,t=0"`` -> ``{"z": slice(10, 20), "t": 0}`` (``start:stop[:step]``, each part
    optional, as Python slices); None stays None.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If an item is not ``NAME=INDEX`` or ``NAME=START:STOP[:STEP]`` with integers, or a
        name repeats.
    """
    if text is None:
        return None
    out: dict[str, int | slice] = {}
    for item in (i.strip() for i in str(text).split(",")):
        name, _, value = item.partition("=")
        parts = value.split(":")
        try:
            bounds = [None if p.strip() == "" else int(p) for p in parts]
        except ValueError:
            bounds = []
        if not name.strip() or not 1 <= len(parts) <= 3 or not bounds \
                or (len(parts) == 1 and bounds[0] is None) or name.strip() in out:
            raise InvalidValueError(
                f"`--planes` must be NAME=INDEX or NAME=START:STOP items, comma-separated, each "
                f"axis once (e.g. --planes z=10 or --planes z=10:20,t=0). Got {text!r}; fix the "
                f"item {item!r}.")
        out[name.strip()] = bounds[0] if len(parts) == 1 else slice(*bounds)
    return isel_arg(out)
