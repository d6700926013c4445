"""OME-Zarr outputs at scale: the cost of the pyramid, and a figure drawn from a low level only.

An uint8 image of tiled ISBI sections (``benchmarks.scale.write_texture``) is stored as an
OME-NGFF 0.5 image with a pixel size of 4 nm (ISBI 2012's), and goes through
``predict_to_zarr`` with a cheap model (:func:`darkness`, one 3x3 convolution; probabilities
float16 + labels uint8, 2048 px chunks), once in the default layout and once with
``ome=True`` (pyramid down to <= 512 px, NGFF metadata by ome-zarr-py). Each run is a fresh
subprocess (peak RSS of its process tree as in ``benchmarks/scale.py``). The difference of the
two wall times is what the pyramid and the OME layout cost.

Then the figure: the membrane probability and the labels of the lowest level, read through a
store that records every key it is asked for, drawn with matplotlib in micrometres from the
level's own coordinates; the script checks that no full-resolution chunk was read.

    python benchmarks/ome.py                 # 40000^2
    python benchmarks/ome.py --size 10000    # quick

Saves JSON to benchmarks/results/ome.json, the figure to docs/ome_lowres.png, and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._measure import measure, save_results  # noqa: E402
from benchmarks.scale import write_texture  # noqa: E402

MODEL = "benchmarks.ome:darkness"
PIXEL_NM = 4.0


def darkness(device: str = "cpu"):
    """A cheap model as fast as ``benchmarks.overhead:conv3x3`` whose output means something:
    one fixed 3x3 convolution, 1 channel -> 2 classes, the membrane logit rising as the 3x3 mean
    of the uint8 input darkens below 110 (ISBI membranes are dark), the cell logit its negative.
    """
    import torch

    conv = torch.nn.Conv2d(1, 2, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1) / (9 * 12.0)
        conv.bias[:] = torch.tensor([-110.0, 110.0]) / 12.0
    return conv.to(device).eval()


def write_ngff_input(store: Path, size: int) -> None:
    """The texture as the full-resolution array ``0`` of an NGFF 0.5 image, 4 nm pixels."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    write_texture(str(store / "0"), size, channel_axis=False)
    group = zarr.open_group(str(store), mode="a", zarr_format=3)
    axes = [{"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"}]
    write_multiscales_metadata(group, [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [PIXEL_NM, PIXEL_NM]}]}], fmt=FormatV05(), axes=axes)


def run_one(image: str, out: str, ome: bool, args) -> dict:
    """One predict_to_zarr run in this process; its wall time."""
    import dask

    import chunkseg
    from chunkseg.models.load import as_model

    t0 = time.perf_counter()
    with dask.config.set(num_workers=args.threads):
        ds = chunkseg.predict_to_zarr(image, as_model(MODEL), out, tile=args.tile,
                                      overlap=args.overlap, chunks=args.chunks,
                                      batch_size=args.batch_size, ome=ome,
                                      outputs="probabilities,labels", dtype="float16",
                                      classes=["cell", "membrane"], overwrite=True)
    return {"seconds": time.perf_counter() - t0, "levels": int(ds.attrs.get("levels", 1))}


def count_objects(out: Path) -> dict:
    files = [p for p in out.rglob("*") if p.is_file()]
    return {"objects": len(files), "bytes": sum(p.stat().st_size for p in files)}


def lowres_figure(out: Path, path: Path) -> dict:
    """Draw the lowest level of an OME output; return what was read to draw it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr
    import zarr

    class Recording(zarr.storage.WrapperStore):
        def __init__(self, store):
            super().__init__(store)
            self.keys: list[str] = []

        async def get(self, key, prototype, byte_range=None):
            self.keys.append(key)
            return await super().get(key, prototype, byte_range)

        def _with_store(self, store):
            return self

    store = Recording(zarr.storage.LocalStore(str(out), read_only=True))
    t0 = time.perf_counter()
    top = zarr.open_group(store, mode="r")
    level = int(top.attrs["levels"]) - 1
    ds = xr.open_zarr(store, group=str(level), consolidated=False)
    prob = ds.probabilities.sel({"class": "membrane"}).astype("float32").values
    # class indices (the NGFF label image stores class k as k + 1, 0 for no prediction)
    from chunkseg._ome import class_labels

    labels = class_labels(top[f"labels/classes/{level}"])[...]
    seconds = time.perf_counter() - t0
    data_keys = [k for k in store.keys if "/c/" in k]
    full_res = [k for k in data_keys if k.startswith(("probabilities/c/", "labels/classes/0/c/"))]
    if full_res:
        raise AssertionError(f"the figure read full-resolution chunks: {full_res[:5]}")
    y, x = ds.y.values / 1000.0, ds.x.values / 1000.0  # nm -> um
    extent = (x[0], x[-1], y[-1], y[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    im = axes[0].imshow(prob, cmap="magma", vmin=0, vmax=1, extent=extent)
    axes[0].set_title(f"membrane probability, level {level} ({prob.shape[0]} x {prob.shape[1]})")
    fig.colorbar(im, ax=axes[0], shrink=0.8)
    axes[1].imshow(labels, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    axes[1].set_title(f"labels (mode of 2 x 2), level {level}")
    for ax in axes:
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")
    fig.suptitle(f"{top['probabilities'].shape[1]}^2 output, drawn from pyramid level {level} "
                 f"only: {len(data_keys)} chunk reads, none at full resolution")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"figure_level": level, "figure_shape": list(prob.shape),
            "figure_chunk_reads": len(data_keys), "figure_read_s": seconds,
            "figure": str(path)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=40000)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunks", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="dask threads (local scheduler)")
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    p.add_argument("--out", default=str(HERE / "results" / "ome.json"))
    p.add_argument("--figure", default=str(HERE.parent / "docs" / "ome_lowres.png"))
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        image, out, ome = args.one
        print(json.dumps(run_one(image, out, ome == "ome", args)))
        return

    common = ["--size", str(args.size), "--tile", str(args.tile), "--overlap",
              str(args.overlap), "--chunks", str(args.chunks), "--batch-size",
              str(args.batch_size), "--threads", str(args.threads)]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="chunkseg-ome-"))
    image = tmp / f"image-{args.size}.ome.zarr"
    if not (image / "zarr.json").exists():
        t0 = time.perf_counter()
        write_ngff_input(image, args.size)
        print(f"wrote {args.size}^2 input in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for layout in ("plain", "ome"):
        out = tmp / f"out-{args.size}-{layout}.zarr"
        r = measure(__file__, [str(image), str(out), layout] + common)
        r.update(layout=layout, size=args.size, **count_objects(out))
        if layout == "ome":
            r.update(lowres_figure(out, Path(args.figure)))
        shutil.rmtree(out, ignore_errors=True)
        rows.append(r)
        print(json.dumps(r), flush=True)
    lines = [f"| {args.size}^2 output | levels | wall time (s) | peak RSS (MiB) | objects | "
             "bytes (MiB) |", "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {'ome=True' if r['layout'] == 'ome' else 'default layout'} | "
                     f"{r['levels']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['objects']} | {r['bytes'] / 2**20:.1f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": "python benchmarks/ome.py " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(), "size": args.size, "tile": args.tile,
            "overlap": args.overlap, "chunks": args.chunks, "threads": args.threads,
            "outputs": "labels (uint8) + probabilities (float16), zstd level 1",
            "model": MODEL, "input": f"NGFF 0.5 image, {PIXEL_NM} nm pixels"}
    save_results(args.out, meta, rows, table)
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
