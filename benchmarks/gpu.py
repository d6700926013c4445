"""GPU throughput: bare model, MONAI ``sliding_window_inference`` and chunkseg Zarr -> Zarr.

For each model (the shipped ISBI U-Net, 0.48 M parameters, and a U-Net of the primer's shape,
widths 64-128-256-512, about 7.7 M parameters, random weights) and each image size (uint8,
ISBI sections tiled, in a local Zarr store with ``--input-chunk`` chunks):

- ``bare``: the model on exactly chunkseg's number of tiles, cut from the reflect-padded image
  already on the GPU as float32, in batches of ``--batch-size``: the floor of any tiled engine;
- ``monai``: ``monai.inferers.sliding_window_inference`` on the image already in GPU memory
  (float32), gaussian window (sigma 0.125 x tile), same tile, overlap and batch; writes nothing,
  its output stays on the GPU;
- ``chunkseg``: ``chunkseg.predict_to_zarr`` from the Zarr store to a Zarr store with the torch
  kernel on the GPU, per output set (``labels``; ``labels`` + float16 ``probabilities``;
  float32 ``logits`` + ``labels``) and, for ``labels``, per dask thread count;
- ``io floor``: dask + zarr reading the input and writing a uint8 array of the same chunks
  (zstd level 1), no model.

All methods see ``x / 255``. cuDNN autotuning (``torch.backends.cudnn.benchmark``) is on for
all, and a warm-up on a small image comes first. Each figure is the best of ``--repeat`` runs,
timed with ``torch.cuda.synchronize()`` around it. Prints a markdown table and saves JSON.
Without CUDA it prints a line and exits 0 (``--device cpu`` runs it on the CPU, for a smoke
test with small sizes).

On the GPU machine (its image has torch but not dask/zarr/monai)::

    bash ../shared/tools/gpu-wheels.sh          # here: fills .whl/
    # there, with .whl carried:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && \\
        python3 benchmarks/gpu.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

OUTPUT_SETS = {
    "labels": ("labels", "float32"),
    "labels+prob16": ("labels,probabilities", "float16"),
    "logits32+labels": ("logits,labels", "float32"),
}


def build_model(name: str, device: str):
    import torch

    from chunkseg.models.unet import UNet, pretrained

    if name == "shipped":
        model = pretrained(device=device)
    elif name == "primer":
        torch.manual_seed(0)
        model = UNet(in_channels=1, classes=2, base_channels=64, depth=3)
    else:
        raise ValueError(f"unknown model {name!r}")
    return model.to(device).eval()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best(fn, repeat: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bare(model, image_dev, plan, batch_size: int) -> None:
    """The model on all of the plan's tiles, cut from the padded image on the device."""
    import torch
    import torch.nn.functional as F

    (by, ay), (bx, ax) = plan.pad_width
    ty, tx = plan.tile
    sy, sx = plan.stride
    with torch.inference_mode():
        padded = F.pad(image_dev, (bx, ax, by, ay), mode="reflect")[0]  # (1, Py, Px)
        grid = padded.unfold(1, ty, sy).unfold(2, tx, sx)  # (1, ny, nx, ty, tx)
        ny, nx = grid.shape[1:3]
        n = ny * nx
        for i in range(0, n, batch_size):
            batch = torch.stack([grid[:, k // nx, k % nx] for k in range(i, min(i + batch_size, n))])
            model(batch)


def monai_run(model, image_dev, tile: int, overlap: int, batch_size: int):
    import torch
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        return sliding_window_inference(image_dev, (tile, tile), batch_size, model,
                                        overlap=overlap / tile, mode="gaussian",
                                        sigma_scale=0.125)


def io_floor(src: str, dst: str) -> None:
    import dask.array as da
    import zarr
    from zarr.codecs import ZstdCodec

    x = da.from_zarr(src)[..., 0]
    target = zarr.create_array(dst, shape=x.shape, chunks=x.chunksize, dtype="uint8",
                               compressors=ZstdCodec(level=1), overwrite=True)
    da.store((x > 128).astype(np.uint8), target, lock=False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--models", nargs="+", default=["shipped", "primer"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--input-chunk", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=None, help="chunkseg chunk (default: plan's)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--outputs", nargs="+", default=list(OUTPUT_SETS), choices=list(OUTPUT_SETS))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tmp", default=None)
    p.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device; skipped (use --device cpu for a smoke test)")
        return
    import dask
    import monai
    import zarr

    import chunkseg
    from benchmarks.scale import write_texture
    from chunkseg.engine.settings import GPU_CHUNK
    from chunkseg.models.spec import Normalization
    from chunkseg.plan import plan_tiles

    torch.backends.cudnn.benchmark = True
    dev = args.device
    norm = Normalization(scale=1 / 255)
    cores = os.cpu_count() or 1
    default_threads = cores
    rows = []
    tmp = Path(tempfile.mkdtemp(dir=args.tmp, prefix="chunkseg-gpu-"))
    try:
        for size in args.sizes:
            src = str(tmp / f"in{size}.zarr")
            t0 = time.perf_counter()
            write_texture(src, size, args.input_chunk)
            print(f"wrote {size}^2 input in {time.perf_counter() - t0:.1f} s", flush=True)
            for name in args.models:
                model = build_model(name, dev)
                params = sum(p.numel() for p in model.parameters())
                chunk = args.chunk or (GPU_CHUNK if dev.startswith("cuda") else None)
                plan = plan_tiles((size, size), args.tile, args.overlap, chunk)
                host = np.asarray(zarr.open_array(src)[..., 0])
                image_dev = (torch.from_numpy(host).to(dev).float() / 255)[None, None]
                del host
                # warm-up: cuDNN autotuning and CUDA context, all three paths, small image
                warm = image_dev[..., :1024, :1024].contiguous()
                bare(model, warm, plan_tiles((1024, 1024), args.tile, args.overlap),
                     args.batch_size)
                monai_run(model, warm, args.tile, args.overlap, args.batch_size)
                chunkseg.predict_to_zarr(src, model, str(tmp / "warm.zarr"), overwrite=True,
                                         tile=args.tile, overlap=args.overlap, chunks=1024,
                                         batch_size=args.batch_size, device=dev,
                                         normalization=norm, outputs="labels")
                _sync(dev)
                row = {"model": name, "params": params, "size": size, "tiles": plan.n_tiles,
                       "chunks": list(plan.chunks), "n_chunks": plan.n_chunks}
                if dev.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                row["bare_s"] = _best(partial(bare, model, image_dev, plan, args.batch_size),
                                      args.repeat, dev)
                row["monai_s"] = _best(partial(monai_run, model, image_dev, args.tile,
                                               args.overlap, args.batch_size), args.repeat, dev)
                if dev.startswith("cuda"):
                    row["monai_gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                del image_dev
                if dev.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                row["chunkseg"] = {}
                for outs in args.outputs:
                    variables, dtype = OUTPUT_SETS[outs]
                    threads_list = args.threads if outs == "labels" else [default_threads]
                    for threads in threads_list:
                        out = str(tmp / "out.zarr")

                        def run(variables=variables, dtype=dtype, threads=threads, out=out,
                                src=src, model=model):
                            shutil.rmtree(out, ignore_errors=True)
                            with dask.config.set(num_workers=threads, scheduler="threads"):
                                chunkseg.predict_to_zarr(
                                    src, model, out, tile=args.tile, overlap=args.overlap,
                                    chunks=args.chunk, batch_size=args.batch_size,
                                    device=dev, normalization=norm, outputs=variables,
                                    dtype=dtype)

                        row["chunkseg"][f"{outs}@{threads}"] = _best(run, args.repeat, dev)
                        print(f"  {name} {size}^2 {outs} threads={threads}: "
                              f"{row['chunkseg'][f'{outs}@{threads}']:.2f} s", flush=True)
                shutil.rmtree(tmp / "out.zarr", ignore_errors=True)
                if dev.startswith("cuda"):
                    row["chunkseg_gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
                row["io_floor_s"] = _best(partial(io_floor, src, str(tmp / "floor.zarr")),
                                          args.repeat, dev)
                rows.append(row)
                print(json.dumps(row), flush=True)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    gpu = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor()
    keys = [f"labels@{t}" for t in args.threads] + [
        f"{o}@{default_threads}" for o in args.outputs if o != "labels"]
    header = ("| model | image | tiles | bare model (s) | MONAI (s) | io floor (s) | "
              + " | ".join(f"chunkseg {k} (s)" for k in keys)
              + " | best labels / MONAI |")
    lines = [header, "|" + "---|" * (7 + len(keys))]
    for r in rows:
        cs = r["chunkseg"]
        best_labels = min(v for k, v in cs.items() if k.startswith("labels@"))
        lines.append(
            f"| {r['model']} ({r['params'] / 1e6:.2f} M) | {r['size']}^2 | {r['tiles']} | "
            f"{r['bare_s']:.2f} | {r['monai_s']:.2f} | {r['io_floor_s']:.2f} | "
            + " | ".join(f"{cs[k]:.2f}" if k in cs else "-" for k in keys)
            + f" | {best_labels / r['monai_s']:.2f} |")
    table = "\n".join(lines)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    meta = {"device": gpu, "cpus": cores, "torch": torch.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__, "monai": monai.__version__,
            "chunkseg": chunkseg.__version__, "commit": commit, "batch_size": args.batch_size,
            "tile": args.tile, "overlap": args.overlap, "input_chunk": args.input_chunk,
            "chunk": args.chunk, "repeat": args.repeat,
            "command": " ".join(["benchmarks/gpu.py"] + (argv or sys.argv[1:]))}
    print(f"{gpu}, {cores} CPUs, torch {torch.__version__}, batch {args.batch_size}, tile "
          f"{args.tile}, overlap {args.overlap}, input chunks {args.input_chunk}")
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "table": table},
                                         indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
