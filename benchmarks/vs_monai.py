"""chunkseg against MONAI's ``sliding_window_inference``: time, peak memory, output difference.

The same model (a 3x3 convolution, 1 channel -> 2 classes, fixed seed), the same uint8 image (a
mosaic of ISBI 2012 sections written chunk by chunk into a Zarr store, 512 px chunks), the same
tile (256), overlap (64 px = 0.25), batch (8) and gaussian window (sigma = 0.125 * tile):

- ``monai``: the image is loaded from the Zarr store into memory as a float32 torch tensor
  ``(1, 1, H, W)`` (MONAI needs it whole; the load is timed separately and included in the
  total), then ``sliding_window_inference(roi_size=(256, 256), sw_batch_size=8, overlap=0.25,
  mode="gaussian", sigma_scale=0.125, padding_mode="reflect")`` on the CPU under
  ``torch.inference_mode()``. The logits are saved as ``.npy`` *after* timing, for the comparison.
- ``chunkseg``: ``predict_to_zarr`` from the Zarr store to a temporary Zarr store, float32
  logits only, 1536 px chunks (``--chunk``), dask's threaded scheduler with 2 threads.

Both sides build the model (and import torch) before the clock starts. torch keeps its default
intra-op threads (the CPU count) unless ``--torch-threads`` says otherwise; MONAI's many small
adds into its full-size output are sensitive to that when other work shares the cores (at
2048^2 on a busy 2-core machine: 0.8 to 6.3 s with 2 threads, 0.4 s with 1), so take timings on
a quiet machine. Each run happens in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its
own; a psutil thread also samples the RSS curve (in the JSON). The two outputs are then compared
block by block (the ``.npy`` memory-mapped, the Zarr read chunk by chunk; memory stays bounded):
max and mean |difference| of the logits over the whole image and over the interior (a
``--border`` of 128 px excluded), and the fraction of pixels whose argmax label agrees. Each is
also compared with the untiled model (the 3x3 convolution over the whole reflect-padded image,
computed block by block with a 1 px halo), which says which side a difference comes from.

The outputs are *not* expected to be identical:

- MONAI's tiles start at 0 and step by its scan interval ``int(256 * 0.75) = 192``; the last
  tile is shifted back to end on the image edge. It pads only an image smaller than a tile, so
  ``padding_mode`` is unused here and the model zero-pads the image border.
- chunkseg's global grid starts at ``-overlap // 2`` on the reflect-padded image.
- MONAI's gaussian importance map is clamped below at 1e-3 (``compute_importance_map``), 32 %
  of a 256 px tile's pixels; chunkseg's gaussian is not. Where every tile's weight is small (between
  tile centres) the clamped tile edges, where the 3x3 model sees its zero padding, get a large
  share of the blend. ``--monai-weights chunkseg`` passes chunkseg's window as MONAI's
  ``roi_weight_map`` to separate this from the tile placement.

Prints two markdown tables and saves JSON (``--out``, default ``benchmarks/results/vs_monai.json``).

    python benchmarks/vs_monai.py                                   # 4096^2, 8192^2, 16384^2
    python benchmarks/vs_monai.py --sizes 1024,2048 --out /tmp/vs_monai.json
    python benchmarks/vs_monai.py --sizes 2048 --monai-weights chunkseg --out /tmp/w.json
    python benchmarks/vs_monai.py --sizes 2048 --torch-threads 1 --out /tmp/t1.json
    python benchmarks/vs_monai.py --sizes 1024,2048 --model unet --out /tmp/unet.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MODEL_SPEC = "benchmarks.vs_monai:conv3x3"
"""How chunkseg names the model (resolved once per process, ``PYTHONPATH`` = repo root)."""
MODELS = {"conv3x3": MODEL_SPEC, "unet": "isbi2012-unet"}
"""``--model``: the cheap 3x3 convolution, or the shipped U-Net (with its ISBI normalisation
on both sides; no untiled reference then, its receptive field exceeds a tile)."""


def _monai_model(name: str):
    """``(module, preprocess)`` for MONAI's side: the same weights and normalisation as
    chunkseg's ``MODELS[name]``."""
    if name == "conv3x3":
        return conv3x3(), (lambda x: x)
    from chunkseg.models.load import BUILTIN_MODELS
    from chunkseg.models.unet import pretrained

    norm = BUILTIN_MODELS["isbi2012-unet"][1]()
    mean, std = float(norm.mean[0]), float(norm.std[0])
    return pretrained(), (lambda x: (x * float(norm.scale) - mean) / std)


def conv3x3(device: str = "cpu"):
    """The cheap model: one 3x3 convolution, 1 channel -> 2 classes, fixed weights.

    The same as ``benchmarks.overhead:conv3x3``; zero padding inside each tile.
    """
    import torch

    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 2, kernel_size=3, padding=1).to(device).eval()


def _weights_digest(module) -> str:
    """Short hash of a module's parameters: both sides must run the same weights."""
    h = hashlib.sha1()
    for p in module.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class RssSampler:
    """Sample this process's RSS every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self.samples: list[tuple[float, float]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss / 2**20
            self.samples.append((time.perf_counter() - self._t0, rss))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def curve(self, points: int = 100) -> list[list[float]]:
        """At most ``points`` samples ``[seconds, MiB]``, each the peak of its stretch."""
        if not self.samples:
            return []
        groups = np.array_split(np.arange(len(self.samples)), min(points, len(self.samples)))
        out = []
        for g in groups:
            t, rss = max((self.samples[i] for i in g), key=lambda s: s[1])
            out.append([round(t, 2), round(rss, 1)])
        return out

    @property
    def peak(self) -> float:
        return max((s[1] for s in self.samples), default=0.0)


def _baseline_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _set_torch_threads(n: int) -> int:
    """Set torch's intra-op threads (0: leave torch's default); return the number in use."""
    import torch

    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def run_monai(image: str, out_npy: str, tile: int, overlap: int, batch_size: int,
              weights: str = "monai", torch_threads: int = 0, model_name: str = "conv3x3") -> dict:
    """MONAI on the whole image in memory, in this process.

    ``weights="monai"``: MONAI's own gaussian importance map (clamped below at 1e-3);
    ``"chunkseg"``: chunkseg's gaussian window passed as ``roi_weight_map`` (a diagnostic).
    """
    import monai
    import torch
    import zarr
    from monai.data.utils import dense_patch_slices
    from monai.inferers import sliding_window_inference

    threads = _set_torch_threads(torch_threads)
    model, preprocess = _monai_model(model_name)
    calls = {"tiles": 0, "batches": 0}
    weight_map = None
    if weights == "chunkseg":
        from chunkseg.kernels.windows import get_window

        weight_map = torch.from_numpy(get_window("gaussian", tile))

    def predictor(x):
        calls["tiles"] += x.shape[0]
        calls["batches"] += 1
        return model(preprocess(x))

    baseline = _baseline_rss_mib()
    with RssSampler() as rss:
        t0 = time.perf_counter()
        pixels = zarr.open_array(image, mode="r")[:, :, 0]  # (H, W) uint8
        x = torch.from_numpy(pixels).to(torch.float32)[None, None]  # (1, 1, H, W) float32
        del pixels
        t_load = time.perf_counter() - t0
        with torch.inference_mode():
            y = sliding_window_inference(
                x, roi_size=(tile, tile), sw_batch_size=batch_size, predictor=predictor,
                overlap=overlap / tile, mode="gaussian", sigma_scale=0.125,
                padding_mode="reflect", sw_device="cpu", device="cpu",
                roi_weight_map=weight_map,
            )
        t_total = time.perf_counter() - t0
    peak = _peak_rss_mib()
    h, w = x.shape[2:]
    starts = dense_patch_slices((h, w), (tile, tile), (tile - overlap, tile - overlap))
    np.save(out_npy, y[0].numpy())  # (K, H, W) float32, after timing
    return {
        "tiles": calls["tiles"], "batches": calls["batches"],
        "tile_starts_x": sorted({int(s[1].start) for s in starts}),
        "load_s": t_load, "infer_s": t_total - t_load, "seconds": t_total,
        "peak_rss_mib": peak, "psutil_peak_rss_mib": rss.peak, "baseline_rss_mib": baseline,
        "rss_curve": rss.curve(), "weights": _weights_digest(model),
        "monai": monai.__version__, "torch_threads": threads,
        "weights_map": weights,
    }


def run_chunkseg(image: str, out_zarr: str, tile: int, overlap: int, chunk: int,
                 batch_size: int, threads: int, torch_threads: int = 0,
                 model_name: str = "conv3x3") -> dict:
    """chunkseg Zarr -> Zarr (float32 logits), in this process."""
    import dask

    import chunkseg
    from chunkseg.models.load import load_model
    from chunkseg.models.spec import ModelSpec
    from chunkseg.plan import plan_tiles

    plan = plan_tiles(chunkseg.open_image(image).shape, tile, overlap, chunk)
    # Load the model (and torch) before timing, as the MONAI run does; the run hits this cache.
    n_torch = _set_torch_threads(torch_threads)
    spec = MODELS[model_name]
    module = load_model(ModelSpec(spec)).module
    baseline = _baseline_rss_mib()
    with RssSampler() as rss, dask.config.set(num_workers=threads):
        t0 = time.perf_counter()
        chunkseg.predict_to_zarr(image, spec, out_zarr, tile=tile, overlap=overlap,
                                 window="gaussian", chunks=chunk, batch_size=batch_size,
                                 outputs="logits", dtype="float32", scheduler="threads")
        seconds = time.perf_counter() - t0
    peak = _peak_rss_mib()
    if load_model.cache_info().misses != 1:
        raise RuntimeError("chunkseg loaded the model again instead of using the cached one.")
    return {
        "tiles": plan.n_tiles, "chunks": plan.n_chunks,
        "tile_starts_x": [int(s) for s in plan.tile_origins()[1]],
        "seconds": seconds, "peak_rss_mib": peak, "psutil_peak_rss_mib": rss.peak,
        "baseline_rss_mib": baseline, "rss_curve": rss.curve(), "weights": _weights_digest(module),
        "threads": threads, "torch_threads": n_torch,
    }


def exact_block(image, module, ys: slice, xs: slice) -> np.ndarray:
    """The model on the whole image, untiled, for one block: the seamless answer.

    The 3x3 convolution only sees a pixel's 3x3 neighbourhood, so run on the block plus a
    1 px halo (reflect-padded on the image border, as chunkseg pads) it gives exactly what one
    pass over the whole image would. Returns ``(K, len(ys), len(xs))`` float32.
    """
    import torch

    h, w = image.shape[:2]
    y0, y1, x0, x1 = max(ys.start - 1, 0), min(ys.stop + 1, h), max(xs.start - 1, 0), min(xs.stop + 1, w)
    block = np.asarray(image[y0:y1, x0:x1, 0], dtype=np.float32)
    pad = ((ys.start - y0 == 0) * 1, (y1 - ys.stop == 0) * 1), \
          ((xs.start - x0 == 0) * 1, (x1 - xs.stop == 0) * 1)
    block = np.pad(block, pad, mode="reflect")
    with torch.inference_mode():
        out = torch.nn.functional.conv2d(torch.from_numpy(block)[None, None], module.weight,
                                         module.bias)
    return out[0].numpy()


class _AbsStats:
    """Running max and mean of |difference| over the whole image and over its interior."""

    def __init__(self):
        self.max = self.sum = self.max_in = self.sum_in = 0.0
        self.where_in: list[int] | None = None
        self.n = self.n_in = 0

    def add(self, d: np.ndarray, inner: tuple[slice, slice], origin: tuple[int, int]) -> None:
        self.max = max(self.max, float(d.max()))
        self.sum += float(d.sum(dtype=np.float64))
        self.n += d.size
        di = d[(slice(None),) + inner]
        if di.size:
            if float(di.max()) > self.max_in:
                _, py, px = np.unravel_index(int(di.argmax()), di.shape)
                self.max_in = float(di.max())
                self.where_in = [origin[0] + inner[0].start + int(py),
                                 origin[1] + inner[1].start + int(px)]
            self.sum_in += float(di.sum(dtype=np.float64))
            self.n_in += di.size

    def to_dict(self, prefix: str) -> dict:
        return {f"{prefix}max_abs_diff": self.max, f"{prefix}mean_abs_diff": self.sum / max(self.n, 1),
                f"{prefix}max_abs_diff_interior": self.max_in,
                f"{prefix}max_abs_diff_interior_at_yx": self.where_in,
                f"{prefix}mean_abs_diff_interior": self.sum_in / max(self.n_in, 1)}


def compare(image: str, out_npy: str, out_zarr: str, border: int, exact: bool = True) -> dict:
    """Compare MONAI's and chunkseg's logits block by block (one Zarr chunk at a time).

    Parameters
    ----------
    image : str
        The input Zarr array, for the exact (untiled) model output, see :func:`exact_block`.
    out_npy : str
        MONAI's ``(K, H, W)`` float32 logits, memory-mapped.
    out_zarr : str
        chunkseg's output group; its ``logits`` array ``(K, H, W)`` is read chunk by chunk.
    border : int
        Pixels excluded on every side for the interior figures.
    exact : bool, default True
        Compare each with the untiled 3x3 convolution (False for the U-Net: those figures are
        None, ``max_abs_logit`` is chunkseg's).

    Returns
    -------
    dict
        chunkseg against MONAI: ``max_abs_diff``, ``mean_abs_diff`` (whole image),
        ``max_abs_diff_interior`` (and where), ``mean_abs_diff_interior``, ``label_agreement``
        and ``label_agreement_interior``; the same ``*_abs_diff*`` figures of each against the
        untiled model, prefixed ``monai_vs_exact_`` and ``chunkseg_vs_exact_``; and
        ``max_abs_logit`` (the exact output's, for scale).

    Notes
    -----
    Holds a few float32 blocks of ``K x chunk x chunk`` at a time (about 150 MiB for 2 classes
    and 1536 px chunks), whatever the image size.
    """
    import zarr

    ref = np.load(out_npy, mmap_mode="r")
    arr = zarr.open_group(out_zarr, mode="r")["logits"]
    img = zarr.open_array(image, mode="r")
    if ref.shape != arr.shape:
        raise ValueError(f"MONAI output {ref.shape} and chunkseg output {arr.shape} differ.")
    module = conv3x3()
    _, h, w = arr.shape
    by, bx = arr.chunks[1:]
    both, mon, cs = _AbsStats(), _AbsStats(), _AbsStats()
    agree = agree_in = n_in = 0
    max_logit = 0.0
    for y0 in range(0, h, by):
        for x0 in range(0, w, bx):
            ys, xs = slice(y0, min(y0 + by, h)), slice(x0, min(x0 + bx, w))
            a = np.asarray(arr[:, ys, xs])
            b = np.asarray(ref[:, ys, xs])
            e = exact_block(img, module, ys, xs) if exact else a
            inner = (slice(max(border, y0) - y0, max(min(h - border, ys.stop) - y0, 0)),
                     slice(max(border, x0) - x0, max(min(w - border, xs.stop) - x0, 0)))
            both.add(np.abs(a - b), inner, (y0, x0))
            if exact:
                mon.add(np.abs(b - e), inner, (y0, x0))
                cs.add(np.abs(a - e), inner, (y0, x0))
            same = a.argmax(0) == b.argmax(0)
            agree += int(same.sum())
            agree_in += int(same[inner].sum())
            n_in += same[inner].size
            max_logit = max(max_logit, float(np.abs(e).max()))
    untiled = {**mon.to_dict("monai_vs_exact_"), **cs.to_dict("chunkseg_vs_exact_")} if exact \
        else dict.fromkeys(_AbsStats().to_dict("monai_vs_exact_") | _AbsStats().to_dict(
            "chunkseg_vs_exact_"))
    return {
        **both.to_dict(""),
        "label_agreement": agree / (h * w),
        "label_agreement_interior": agree_in / max(n_in, 1),
        **untiled,
        "max_abs_logit": max_logit,
        "border": border,
    }


def window_check(tile: int) -> dict:
    """MONAI's gaussian importance map against chunkseg's gaussian window for one tile."""
    from monai.data.utils import compute_importance_map

    from chunkseg.kernels.windows import get_window

    m = compute_importance_map((tile, tile), mode="gaussian", sigma_scale=0.125).numpy()
    c = get_window("gaussian", tile)
    clamped = m <= 1e-3 * (1 + 1e-6)
    return {
        "monai_max": float(m.max()), "monai_min": float(m.min()),
        "chunkseg_max": float(c.max()), "chunkseg_min": float(c.min()),
        "monai_clamped_fraction": float(clamped.mean()),
        "max_abs_diff_after_scaling_to_max_1": float(np.abs(m / m.max() - c).max()),
    }


def _subprocess(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--one"] + args, capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"measurement {args[:1]} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sizes(text: str) -> list[int]:
    from chunkseg.demo import SECTION_SIZE

    sizes = [int(s) for s in text.split(",")]
    bad = [s for s in sizes if s < SECTION_SIZE or s % SECTION_SIZE]
    if bad:
        raise ValueError(
            f"`--sizes` must be positive multiples of {SECTION_SIZE} (the mosaic's sections). "
            f"Got {bad}."
        )
    return sizes


def _table(rows: list[dict]) -> str:
    header = ("| size | tiles MONAI / chunkseg | MONAI s (load) | chunkseg s | time ratio "
              "chunkseg/MONAI | MONAI peak RSS MiB | chunkseg peak RSS MiB | RSS ratio "
              "chunkseg/MONAI | max abs diff interior (whole) | label agreement |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['size']}^2 | {r['monai_tiles']} / {r['chunkseg_tiles']} | "
            f"{r['monai_s']:.2f} ({r['monai_load_s']:.2f}) | {r['chunkseg_s']:.2f} | "
            f"{r['time_ratio']:.2f} | {r['monai_peak_rss_mib']} | {r['chunkseg_peak_rss_mib']} | "
            f"{r['rss_ratio']:.2f} | {r['max_abs_diff_interior']:.3g} "
            f"({r['max_abs_diff']:.3g}) | {100 * r['label_agreement']:.4f}% |"
        )
    return "\n".join(lines)


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _accuracy_table(rows: list[dict]) -> str:
    header = ("| size | chunkseg vs MONAI: max abs diff interior / whole | mean abs diff "
              "interior / whole | MONAI vs untiled: max abs diff interior / whole | chunkseg vs "
              "untiled: max abs diff interior / whole | max abs logit | label agreement "
              "interior / whole |")
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['size']}^2 | {r['max_abs_diff_interior']:.3g} / {r['max_abs_diff']:.3g} | "
            f"{r['mean_abs_diff_interior']:.3g} / {r['mean_abs_diff']:.3g} | "
            f"{_g(r['monai_vs_exact_max_abs_diff_interior'])} / "
            f"{_g(r['monai_vs_exact_max_abs_diff'])} | "
            f"{_g(r['chunkseg_vs_exact_max_abs_diff_interior'])} / "
            f"{_g(r['chunkseg_vs_exact_max_abs_diff'])} | {r['max_abs_logit']:.3g} | "
            f"{100 * r['label_agreement_interior']:.4f}% / {100 * r['label_agreement']:.4f}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4096,8192,16384",
                   help="image sides, multiples of 512, comma-separated (4096,8192,16384)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk", type=int, default=1536, help="chunkseg chunk, px (1536)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="dask threads for chunkseg (2)")
    p.add_argument("--model", choices=sorted(MODELS), default="conv3x3",
                   help="conv3x3 (cheap, with an untiled reference) or unet (the shipped "
                        "isbi2012-unet, ~0.1 s per 256 px tile on one core) (conv3x3)")
    p.add_argument("--border", type=int, default=128, help="px left out of the interior (128)")
    p.add_argument("--monai-weights", choices=("monai", "chunkseg"), default="monai",
                   help="MONAI's blending weights: its own gaussian importance map (clamped "
                        "below at 1e-3), or chunkseg's gaussian as roi_weight_map (monai)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads in both runs (0: torch's default, the CPU count)")
    p.add_argument("--tmp", default=None, help="folder for the temporary stores (system temp)")
    p.add_argument("--out", default=str(RESULTS / "vs_monai.json"), help="JSON results path")
    p.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        mode, image, out = args.one
        if mode == "monai":
            result = run_monai(image, out, args.tile, args.overlap, args.batch_size,
                               args.monai_weights, args.torch_threads, args.model)
        else:
            result = run_chunkseg(image, out, args.tile, args.overlap, args.chunk,
                                  args.batch_size, args.threads, args.torch_threads, args.model)
        print(json.dumps(result))
        return

    import dask
    import monai
    import torch
    import zarr

    from chunkseg.demo import SECTION_SIZE, build_mosaic

    try:
        sizes = _sizes(args.sizes)
    except ValueError as e:
        p.error(str(e))
    common = ["--tile", str(args.tile), "--overlap", str(args.overlap), "--chunk",
              str(args.chunk), "--batch-size", str(args.batch_size), "--threads",
              str(args.threads), "--torch-threads", str(args.torch_threads), "--model", args.model]
    rows, runs = [], []
    for size in sizes:
        n = size // SECTION_SIZE
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            image = os.path.join(tmp, "image.zarr")
            build_mosaic(image, rows=n, cols=n)
            npy, out_zarr = os.path.join(tmp, "monai.npy"), os.path.join(tmp, "chunkseg.zarr")
            mon = _subprocess(["monai", image, npy, "--monai-weights", args.monai_weights]
                              + common)
            cs = _subprocess(["chunkseg", image, out_zarr] + common)
            if mon["weights"] != cs["weights"]:
                raise RuntimeError(f"the two runs used different weights: {mon['weights']} "
                                   f"(MONAI) vs {cs['weights']} (chunkseg)")
            diff = compare(image, npy, out_zarr, args.border, exact=args.model == "conv3x3")
        runs.append({"size": size, "monai": mon, "chunkseg": cs, "diff": diff})
        rows.append({
            "size": size, "monai_tiles": mon["tiles"], "chunkseg_tiles": cs["tiles"],
            "chunkseg_chunks": cs["chunks"],
            "monai_s": round(mon["seconds"], 3), "monai_load_s": round(mon["load_s"], 3),
            "monai_infer_s": round(mon["infer_s"], 3), "chunkseg_s": round(cs["seconds"], 3),
            "time_ratio": round(cs["seconds"] / mon["seconds"], 3),
            "monai_peak_rss_mib": round(mon["peak_rss_mib"]),
            "chunkseg_peak_rss_mib": round(cs["peak_rss_mib"]),
            "rss_ratio": round(cs["peak_rss_mib"] / mon["peak_rss_mib"], 3),
            **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in diff.items()},
        })
        print(f"{size}^2 done: MONAI {mon['seconds']:.1f} s, chunkseg {cs['seconds']:.1f} s",
              file=sys.stderr)
    meta = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "sizes": sizes, "tile": args.tile, "overlap": args.overlap,
        "monai_overlap": args.overlap / args.tile, "chunk": args.chunk,
        "batch_size": args.batch_size, "dask_threads": args.threads,
        "torch_threads": args.torch_threads or torch.get_num_threads(), "cpus": os.cpu_count(), "border": args.border,
        "model": MODELS[args.model], "window": "gaussian, sigma = 0.125 * tile",
        "monai_weights": args.monai_weights,
        "monai_time": "load (Zarr -> float32 tensor) + sliding_window_inference; .npy save excluded",
        "chunkseg_time": "predict_to_zarr, Zarr in, float32 logits to Zarr (zstd)",
        "window_check": window_check(args.tile),
        "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__, "monai": monai.__version__, "dask": dask.__version__,
        "zarr": zarr.__version__, "numpy": np.__version__,
    }
    table, accuracy = _table(rows), _accuracy_table(rows)
    print(f"uint8 ISBI mosaic, tile {args.tile}, overlap {args.overlap}, batch "
          f"{args.batch_size}, gaussian; chunkseg chunk {args.chunk}, {args.threads} dask "
          f"threads; {meta['torch_threads']} torch threads, {meta['cpus']} CPUs; MONAI s = load "
          f"+ inference; interior = {args.border} px border excluded")
    print(table)
    print(f"\nlogits against each other and against the untiled model (the 3x3 convolution over "
          f"the whole reflect-padded image); MONAI weights: {args.monai_weights}")
    print(accuracy)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs,
                                          "table": table, "accuracy_table": accuracy},
                                         indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
