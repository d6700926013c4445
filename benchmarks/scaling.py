"""How far one dask scheduler carries chunkseg: clusters here, and many simulated workers.

Two parts, each ``predict_to_zarr`` on a uint8 mosaic of ISBI 2012 sections (a Zarr store):

- ``here``: the same cores through dask's threaded scheduler, a ``LocalCluster`` of one worker
  with ``--threads`` threads, and one of ``--threads`` single-threaded worker processes, each
  started twice (``--environ``): as dask starts it (its nanny sets
  ``MALLOC_TRIM_THRESHOLD_=65536`` in the workers) and through
  :func:`chunkseg.scheduling.local_cluster` (which leaves it unset), with
  the shipped U-Net (``--model unet``) or a model that sleeps (``--model sleep``). Each
  cluster runs once to load the model on its workers, then the runs alternate (threaded,
  cluster, threaded, cluster...) for ``--rounds``; the table gives each cluster's time over
  the threaded run of its round.
- ``simulated``: ``LocalCluster(processes=False)`` with many single-threaded workers in this
  process and a model that sleeps ``--sleep`` seconds per tile (releasing the GIL) instead of
  computing, on small chunks so there are many tasks. Reported: the graph's tasks, the wall
  time (and the threaded scheduler's, with as many threads, for the same work), the tasks per second the whole system sustained, and the workers' busy fraction
  (``sleep * tiles / (workers * wall)``). With ``--sleep 0`` the rate is the scheduler's (and
  the in-process workers') ceiling.

From the best rate and the graph's tasks per chunk, the extrapolation says (i) how many
workers one scheduler keeps busy for a given per-chunk model time (``rate * t_chunk /
tasks_per_chunk``), and (ii) the scheduler's own time per gigapixel at the default chunk, and
so the largest image it turns around in an hour on an unlimited cluster. These are linear
extrapolations of a rate measured on this machine (with its cores shared), not measurements
of a real cluster: a scheduler on its own host, and real network transfers, change them.

Prints tables and saves JSON (``--out``, default ``benchmarks/results/scaling.json``).

    python benchmarks/scaling.py                                  # both parts, sleep model
    python benchmarks/scaling.py --part here --model unet --size 2048 --chunk 1024
    python benchmarks/scaling.py --part simulated --workers 1,8,32,64 --sleep 0.01
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
if str(ROOT) not in sys.path:  # the model specs name `benchmarks.scaling:...`
    sys.path.insert(0, str(ROOT))
SLEEP_ENV = "CHUNKSEG_BENCH_SLEEP"
"""Seconds per tile of :func:`sleepy`, read at each call (workers inherit the environment)."""


class Sleepy:
    """A 2-class model that sleeps ``$CHUNKSEG_BENCH_SLEEP`` seconds per tile; zero logits."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        seconds = float(os.environ.get(SLEEP_ENV, "0")) * n
        if seconds > 0:
            time.sleep(seconds)
        return np.zeros((n, 2, h, w), np.float32)


def sleepy() -> Sleepy:
    """The factory chunkseg loads as ``benchmarks.scaling:sleepy``."""
    return Sleepy()


MODELS = {"unet": "isbi2012-unet", "sleep": "benchmarks.scaling:sleepy"}


def _mosaic(tmp: str, size: int) -> str:
    from chunkseg.demo import SECTION_SIZE, build_mosaic

    n = -(-size // SECTION_SIZE)
    path = os.path.join(tmp, f"mosaic{size}.zarr")
    if not os.path.exists(path):
        build_mosaic(path, rows=n, cols=n)
    return path


def _run(image: str, out: str, model: str, chunk: int, scheduler, outputs: str) -> dict:
    import chunkseg

    t0 = time.perf_counter()
    chunkseg.predict_to_zarr(image, MODELS[model], out, chunks=chunk, outputs=outputs,
                             overwrite=True, scheduler=scheduler)
    return {"seconds": time.perf_counter() - t0}


def part_here(args, tmp: str) -> dict:
    from distributed import Client, LocalCluster

    from chunkseg.scheduling import local_cluster

    image = _mosaic(tmp, args.size)
    out = os.path.join(tmp, "out.zarr")
    outputs = "logits"
    layouts = {f"1 worker x {args.threads} threads": (1, args.threads),
               f"{args.threads} workers x 1 thread": (args.threads, 1)}

    def dask_default(n, t):  # dask's worker environment (MALLOC_TRIM_THRESHOLD_=65536)
        @contextlib.contextmanager
        def cm():
            with LocalCluster(n_workers=n, threads_per_worker=t, processes=True,
                              dashboard_address="127.0.0.1:0") as cluster, \
                    Client(cluster) as client:
                yield client
        return cm()

    starts = {"dask's worker environment": dask_default,
              "chunkseg's local_cluster": local_cluster}
    rows = []
    for env, start in starts.items():
        if args.environ != "both" and not env.startswith(args.environ):
            continue
        for name, (n, t) in layouts.items():
            with start(n, t) as client:
                malloc = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
                _run(image, out, args.model, args.chunk, client, outputs)  # loads the model
                for r in range(args.rounds):
                    import dask

                    with dask.config.set(num_workers=args.threads):
                        threaded = _run(image, out, args.model, args.chunk, "threads", outputs)
                    dist = _run(image, out, args.model, args.chunk, client, outputs)
                    rows.append({"workers": env, "malloc_trim_threshold": sorted(
                        set(map(str, malloc.values()))), "cluster": name, "round": r,
                        "threaded_s": round(threaded["seconds"], 2),
                        "cluster_s": round(dist["seconds"], 2),
                        "ratio": round(dist["seconds"] / threaded["seconds"], 3),
                        "load": round(os.getloadavg()[0], 1)})
                    print(f"  {env}, {name}, round {r}: threaded {threaded['seconds']:.2f} s, "
                          f"cluster {dist['seconds']:.2f} s", file=sys.stderr, flush=True)
    return {"size": args.size, "chunk": args.chunk, "model": args.model,
            "sleep_per_tile_s": args.here_sleep if args.model == "sleep" else None, "rows": rows}


def _graph_tasks(image: str, chunk: int) -> dict:
    """Tasks of the graph predict_to_zarr builds (the image-reading tasks apart)."""
    import chunkseg
    from chunkseg.plan import plan_tiles

    plan = plan_tiles(chunkseg.open_image(image).shape, 256, 64, chunk)
    return {"chunks": plan.n_chunks, "tiles": plan.n_tiles,
            "pixels": plan.image_shape[0] * plan.image_shape[1]}


def part_simulated(args, tmp: str) -> dict:
    from distributed import Client, LocalCluster, get_task_stream

    image = _mosaic(tmp, args.sim_size)
    geometry = _graph_tasks(image, args.sim_chunk)
    out = os.path.join(tmp, "sim.zarr")
    rows = []
    for n in [int(w) for w in args.workers.split(",")]:
        # memory_limit=0: in one process, every worker would see the whole process's memory
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=False, memory_limit=0,
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            os.environ[SLEEP_ENV] = "0"
            _run(image, out, "sleep", args.sim_chunk, client, "labels")  # warm-up
            os.environ[SLEEP_ENV] = str(args.sleep)
            with get_task_stream(client) as stream:
                res = _run(image, out, "sleep", args.sim_chunk, client, "labels")
            tasks = len(stream.data)
        import dask

        with dask.config.set(num_workers=n):  # the same work on dask's threaded scheduler
            threaded = _run(image, out, "sleep", args.sim_chunk, "threads", "labels")
        busy = args.sleep * geometry["tiles"] / (n * res["seconds"])
        rows.append({"workers": n, "tasks": tasks, "seconds": round(res["seconds"], 3),
                     "tasks_per_s": round(tasks / res["seconds"], 1),
                     "busy_fraction": round(busy, 3),
                     "threaded_s": round(threaded["seconds"], 3), "ideal_s": round(
                         args.sleep * geometry["tiles"] / n, 3)})
        print(f"  {n} workers: {tasks} tasks in {res['seconds']:.2f} s", file=sys.stderr,
              flush=True)
    return {"size": args.sim_size, "chunk": args.sim_chunk, "sleep_per_tile_s": args.sleep,
            **geometry, "rows": rows}


def extrapolate(sim: dict, t_chunk: float, chunk: int = 1536) -> dict:
    """What the best measured rate implies (see the module's notes)."""
    best = max(r["tasks_per_s"] for r in sim["rows"])
    per_chunk = max(r["tasks"] for r in sim["rows"]) / sim["chunks"]
    chunks_per_gpx = 1e9 / (chunk * chunk)
    scheduler_s_per_gpx = chunks_per_gpx * per_chunk / best
    return {
        "best_tasks_per_s": best, "tasks_per_chunk": round(per_chunk, 2),
        "default_chunk": chunk, "unet_s_per_chunk_per_core": t_chunk,
        "busy_workers_one_scheduler": round(best * t_chunk / per_chunk),
        "scheduler_s_per_gigapixel": round(scheduler_s_per_gpx, 2),
        "largest_image_side_in_an_hour_px": int((3600 / scheduler_s_per_gpx * 1e9) ** 0.5),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("here", "simulated", "both"), default="both")
    p.add_argument("--model", choices=sorted(MODELS), default="sleep",
                   help="the 'here' part's model (sleep)")
    p.add_argument("--size", type=int, default=2048, help="'here' image side, px (2048)")
    p.add_argument("--chunk", type=int, default=1024, help="'here' chunk, px (1024)")
    p.add_argument("--threads", type=int, default=2, help="cores used 'here' (2)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--environ", choices=("dask", "chunkseg", "both"), default="both",
                   help="'here' workers: dask's environment, chunkseg's local_cluster, or both")
    p.add_argument("--workers", default="1,8,32,64", help="simulated workers (1,8,32,64)")
    p.add_argument("--sim-size", type=int, default=4096, help="simulated image side (4096)")
    p.add_argument("--sim-chunk", type=int, default=256, help="simulated chunk, px (256)")
    p.add_argument("--sleep", type=float, default=0.01,
                   help="simulated seconds per tile (0.01)")
    p.add_argument("--here-sleep", type=float, default=0.05,
                   help="'here' seconds per tile of the sleep model (0.05)")
    p.add_argument("--unet-tile-s", type=float, default=0.1,
                   help="U-Net seconds per 256 px tile on one core, for the extrapolation")
    p.add_argument("--tmp", default=None)
    p.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = p.parse_args(argv)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    import dask
    import distributed
    import torch

    result = {"meta": {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                       "cpus": os.cpu_count(), "load_at_start": os.getloadavg(),
                       "python": platform.python_version(), "dask": dask.__version__,
                       "distributed": distributed.__version__, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.part in ("here", "both"):
            os.environ[SLEEP_ENV] = str(args.here_sleep)
            result["here"] = part_here(args, tmp)
            print(f"\n'here': {args.model} model, {args.size}^2, {args.chunk} px chunks")
            print("| workers | MALLOC_TRIM_THRESHOLD_ | cluster | round | threaded s | cluster s "
                  "| cluster / threaded | load |")
            print("|---|---|---|---|---|---|---|---|")
            for r in result["here"]["rows"]:
                print(f"| {r['workers']} | {','.join(r['malloc_trim_threshold'])} | "
                      f"{r['cluster']} | {r['round']} | {r['threaded_s']} | {r['cluster_s']} | "
                      f"{r['ratio']} | {r['load']} |")
        if args.part in ("simulated", "both"):
            sim = result["simulated"] = part_simulated(args, tmp)
            # a 1536 px chunk holds about (1536 / 192)^2 = 64 tiles of 256 px (overlap 64)
            t_chunk = args.unet_tile_s * (1536 / 192) ** 2
            result["extrapolation"] = extrapolate(sim, t_chunk)
            print(f"\nsimulated: {sim['size']}^2, {sim['chunk']} px chunks ({sim['chunks']} "
                  f"chunks, {sim['tiles']} tiles), sleep {sim['sleep_per_tile_s']} s per tile")
            print("| workers | tasks | s | threaded s | ideal s | tasks/s | busy fraction |")
            print("|---|---|---|---|---|---|---|")
            for r in sim["rows"]:
                print(f"| {r['workers']} | {r['tasks']} | {r['seconds']} | {r['threaded_s']} | "
                      f"{r['ideal_s']} | {r['tasks_per_s']} | {r['busy_fraction']} |")
            print("extrapolation:", json.dumps(result["extrapolation"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
