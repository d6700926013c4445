"""Zarr v3 sharded outputs: same values as unsharded, one object per shard written once by one
task, a clear error for a shard that is not a multiple of the chunk, resume, xarray reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from model_factories import numpy_conv3x3
from reference import CountingStore
from test_resume import (
    FailsLate,
    assert_resume_wrote_only_missing,
    chunk_files,
    finished_chunks,
    tiles_to_resume,
)

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError
from chunkseg.plan import plan_tiles

NAMES = ("logits", "probabilities", "labels")
KW = dict(tile=48, overlap=16, outputs="logits,probabilities,labels")
SHARDS, CHUNKS = (128, 64), 32  # the image (300, 260) is not a multiple of either


def _image(shape=(300, 260)):
    return (np.random.default_rng(9).random(shape) * 255).astype(np.uint8)


def _n_shards(shape=(300, 260), shards=SHARDS):
    return plan_tiles(shape, 48, 16, shards).n_chunks


def test_sharded_equals_unsharded_and_reports_shards(tmp_path):
    image = _image()
    plain = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "plain.zarr"),
                                     chunks=SHARDS, **KW)
    out = tmp_path / "sharded.zarr"
    sharded = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), chunks=CHUNKS,
                                       shards=SHARDS, **KW)
    # finer unsharded chunks: the same values too (the output does not depend on the chunking)
    fine = chunkseg.predict(image, numpy_conv3x3(), chunks=CHUNKS, **KW)
    for name in NAMES:
        np.testing.assert_array_equal(sharded[name].values, plain[name].values)
        assert sharded[name].dtype == plain[name].dtype
        np.testing.assert_allclose(sharded[name].values.astype(np.float64),
                                   fine[name].values.astype(np.float64), rtol=1e-6, atol=1e-6)
    group = zarr.open_group(str(out), mode="r")
    k = sharded.attrs["classes"]
    for name in NAMES:
        lead = () if name == "labels" else (k,)
        assert group[name].shards == lead + SHARDS
        assert group[name].chunks == lead + (CHUNKS, CHUNKS)
        files = [p for p in (out / name / "c").rglob("*") if p.is_file()]
        assert len(files) == _n_shards()  # one object per shard
    assert zarr.open_group(str(tmp_path / "plain.zarr"), mode="r")["labels"].shards is None
    assert sharded.attrs["shards"] == list(SHARDS)
    assert sharded.attrs["zarr_chunks"] == [CHUNKS, CHUNKS]
    assert sharded.attrs["chunks"] == list(SHARDS)  # the computation chunk is the shard
    assert chunkseg.output_progress(str(out)) == (_n_shards(), _n_shards())
    # xarray reads the sharded output (lazily, by its own dask chunks)
    ds = xr.open_zarr(str(out))
    for name in NAMES:
        np.testing.assert_array_equal(ds[name].values, plain[name].values)
    np.testing.assert_array_equal(ds.labels[100:200, 37:211].values,
                                  plain.labels[100:200, 37:211].values)


def test_each_shard_written_once_whole():
    store = CountingStore(zarr.storage.MemoryStore())
    image = _image()
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), store, chunks=CHUNKS, shards=SHARDS, **KW)
    n = _n_shards()
    writes = {k: v for k, v in store.writes.items()
              if "/c/" in k and k.startswith(tuple(f"{n}/" for n in NAMES))}
    for name in NAMES:
        mine = {k: v for k, v in writes.items() if k.startswith(f"{name}/c/")}
        assert len(mine) == n, name
    assert len(writes) == 3 * n and set(writes.values()) == {1}
    # the manifest: one element per shard (= computation chunk), each written once
    marks = {k: v for k, v in store.writes.items() if k.startswith("chunkseg/done/c/")}
    assert len(marks) == n and set(marks.values()) == {1}


@pytest.mark.parametrize("shards, chunks", [(100, 32), ((128, 60), 32), (2048, None), (0, 32)])
def test_shard_not_a_multiple_of_chunks_refused_before_writing(tmp_path, shards, chunks):
    out = tmp_path / "out.zarr"
    kwargs = dict(KW) if chunks is None else dict(KW, chunks=chunks)
    match = "positive" if shards == 0 else "`shards` must be a multiple of `chunks`"
    with pytest.raises(InvalidValueError, match=match) as info:
        chunkseg.predict_to_zarr(_image(), numpy_conv3x3(), str(out), shards=shards, **kwargs)
    if shards:
        assert "shards=" in str(info.value) and "chunks=" in str(info.value)
    assert not out.exists()


def test_resume_sharded_run_equals_clean_run(tmp_path):
    image = _image((400, 330))
    kw = dict(KW, chunks=CHUNKS, shards=SHARDS)
    clean = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "clean.zarr"), **kw)
    out = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError, match="late tile"):
        # late enough that some block feeds only finished shards: 19 or 20 of the 24 are
        # finished, whichever order dask picks (with 20 it can be 12, all blocks still needed)
        chunkseg.predict_to_zarr(image, FailsLate(limit=22), str(out), scheduler="sync", **kw)
    done, total = chunkseg.output_progress(str(out))
    assert 0 < done < total == _n_shards((400, 330))
    # other shards or other inner chunks: refused by the fingerprint
    with pytest.raises(InvalidValueError, match="zarr_chunks"):
        chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), resume=True,
                                 **dict(kw, chunks=64))
    with pytest.raises(InvalidValueError, match="shards"):
        chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), resume=True,
                                 **dict(kw, shards=None, chunks=SHARDS))
    finished, before = finished_chunks(out), chunk_files(out)  # one object per shard
    counting = FailsLate(limit=10**9)
    resumed = chunkseg.predict_to_zarr(image, counting, str(out), resume=True, **kw)
    assert resumed.attrs["complete"] is True
    for name in NAMES:
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)
    assert zarr.open_group(str(out))["chunkseg/done"][...].all()
    assert len([p for p in (out / "labels" / "c").rglob("*") if p.is_file()]) == total
    # the shards finished before were neither rewritten nor recomputed; only the others were
    plan = plan_tiles(image.shape, 48, 16, SHARDS)  # the computation chunk is the shard
    assert_resume_wrote_only_missing(out, before, finished, plan)
    assert counting.tiles == tiles_to_resume(plan, finished) + 1  # + the probe of the 1st tile


def test_cli_shards(tmp_path, capsys):
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    z = zarr.create_array(str(src), shape=(300, 260), dtype="u1", chunks=(100, 100),
                          dimension_names=("y", "x"))
    z[...] = _image()
    args = ["predict", str(src), str(out), "--model", "model_factories:numpy_conv3x3",
            "--tile", "48", "--overlap", "16", "--chunk", "32", "--outputs", "logits,labels",
            "--no-progress"]
    assert main(args + ["--shards", "100"]) == 2
    assert "`--shards` must be a multiple of `--chunk`" in capsys.readouterr().err
    assert not Path(out).exists()
    assert main(args + ["--shards", "128,64"]) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group["labels"].shards == SHARDS and group["labels"].chunks == (CHUNKS, CHUNKS)
    assert main(["info", str(out)]) == 0
    assert "shards     [128, 64]" in capsys.readouterr().out
