"""label(..., resume=True): an interrupted run finishes with only its unfinished chunks written,
and the result equals an uninterrupted run's."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from test_watershed import MODEL, _cells

import chunkseg
import chunkseg.objects.instances as inst
import chunkseg.objects.watershed as wsmod
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError
from chunkseg.kernels import watershed as wskern

WS = dict(method="watershed", seed_threshold=0.95, min_seed_size=5, boundary_weight=8.0,
          max_cost=20.0, merge_threshold=0.3)


class Interrupt(RuntimeError):
    pass


def _output(tmp_path, name="out.zarr", layout="plain"):
    out = tmp_path / name
    chunkseg.predict_to_zarr(_cells(), MODEL, str(out), tile=32, overlap=8, chunks=40,
                             outputs="labels,probabilities", ome=layout == "ome", levels=2 if layout == "ome" else None)
    return str(out)  # 150 x 170 in 40 px chunks: a 4 x 5 grid, 20 chunks


def _counting(monkeypatch, module, attr, fail_after=None):
    """Wrap ``module.attr``: count its calls, raise Interrupt at call ``fail_after + 1``."""
    calls = []
    real = getattr(module, attr)

    def wrapped(*args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupt("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, wrapped)
    return calls


@pytest.mark.parametrize("where", ["seeds", "flooding", "writing"])
def test_resumed_watershed_equals_a_whole_run_and_writes_only_the_rest(tmp_path, monkeypatch,
                                                                       where):
    whole = chunkseg.label(_output(tmp_path, "a.zarr"), cls=0, scheduler="synchronous", **WS)
    out = _output(tmp_path, "b.zarr")
    module, attr = {"seeds": (wsmod, "_seed_task"), "flooding": (wskern, "flood_block"),
                    "writing": (inst, "_relabel_task")}[where]
    with monkeypatch.context() as m:
        _counting(m, module, attr, fail_after=7)
        with pytest.raises(Interrupt):
            chunkseg.label(out, cls=0, scheduler="synchronous", **WS)
    group = zarr.open_group(out, mode="r", use_consolidated=False)
    assert "label-instances" in group["chunkseg"]  # the run's record is kept
    floods = _counting(monkeypatch, wskern, "flood_block")
    relabels = _counting(monkeypatch, inst, "_relabel_task")
    got = chunkseg.label(out, cls=0, scheduler="synchronous", resume=True, **WS)
    np.testing.assert_array_equal(got.values, whole.values)
    assert got.attrs["objects"] == whole.attrs["objects"] and got.attrs["complete"] is True
    # 20 chunks: the 7 finished ones of the interrupted pass are not written again
    assert len(floods) == {"seeds": 20, "flooding": 13, "writing": 0}[where]
    assert len(relabels) == {"seeds": 20, "flooding": 20, "writing": 13}[where]
    group = zarr.open_group(out, mode="r", use_consolidated=False)
    assert "label-instances" not in group["chunkseg"]
    assert not {"instances-seeds", "instances-boundary", "instances-fragments"} & set(group)


def test_resumed_components_and_the_ome_layout(tmp_path, monkeypatch):
    for layout in ("plain", "ome"):
        whole = chunkseg.label(_output(tmp_path, f"a-{layout}.zarr", layout), cls=0,
                               scheduler="synchronous")
        out = _output(tmp_path, f"b-{layout}.zarr", layout)
        with monkeypatch.context() as m:
            _counting(m, inst, "_relabel_task", fail_after=11)
            with pytest.raises(Interrupt):
                chunkseg.label(out, cls=0, scheduler="synchronous")
        relabels = _counting(monkeypatch, inst, "_relabel_task")
        got = chunkseg.label(out, cls=0, scheduler="synchronous", resume=True)
        monkeypatch.undo()
        assert len(relabels) == 9
        np.testing.assert_array_equal(got.values, whole.values)
        if layout == "ome":  # the pyramid is written whole after the resumed level 0
            a, b = (zarr.open_group(p, mode="r") for p in (tmp_path / "a-ome.zarr", out))
            np.testing.assert_array_equal(a["labels/instances/1"][...],
                                          b["labels/instances/1"][...])


def test_resume_refuses_what_it_cannot_finish(tmp_path, monkeypatch):
    out = _output(tmp_path)
    with pytest.raises(InvalidValueError, match="interrupted run of label with `name` 'instances'"):
        chunkseg.label(out, cls=0, resume=True, **WS)
    with monkeypatch.context() as m:
        _counting(m, wskern, "flood_block", fail_after=3)
        with pytest.raises(Interrupt):
            chunkseg.label(out, cls=0, scheduler="synchronous", **WS)
    with pytest.raises(InvalidValueError, match=r"these differ: watershed \(was"):
        chunkseg.label(out, cls=0, resume=True, **{**WS, "max_cost": 21.0})
    with pytest.raises(InvalidValueError, match="these differ: method"):
        chunkseg.label(out, cls=0, resume=True)
    with pytest.raises(InvalidValueError, match="exclude each other"):
        chunkseg.label(out, cls=0, resume=True, overwrite=True, **WS)
    # marks that cannot be trusted are refused, not guessed
    zarr.open_group(out, mode="r+", use_consolidated=False)["chunkseg/label-instances/fragments"][0, 0] = 7
    with pytest.raises(InvalidValueError, match="cannot be trusted"):
        chunkseg.label(out, cls=0, resume=True, **WS)
    # a new run (without resume) replaces the interrupted one's record and scratch arrays
    got = chunkseg.label(out, cls=0, **WS)
    assert got.attrs["complete"] is True
    with pytest.raises(InvalidValueError, match="overwrite=True` to replace the finished"):
        chunkseg.label(out, cls=0, resume=True, **WS)


def test_cli_label_resume(tmp_path, monkeypatch, capsys):
    out = _output(tmp_path)
    args = ["label", out, "--class", "0", "--method", "watershed", "--seed-threshold", "0.95",
            "--min-seed-size", "5", "--max-cost", "20", "--boundary-weight", "8",
            "--scheduler", "synchronous", "--no-progress"]
    with monkeypatch.context() as m:
        _counting(m, wskern, "flood_block", fail_after=5)
        with pytest.raises(Interrupt):
            main(args)
    floods = _counting(monkeypatch, wskern, "flood_block")
    assert main(args + ["--resume"]) == 0
    assert len(floods) == 15
    assert "objects of class 0" in capsys.readouterr().out
