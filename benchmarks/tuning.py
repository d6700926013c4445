"""Choosing the defaults by measurement: computation chunk, dask threads, zarr's async
concurrency and the zstd level, on one image with the cheap 3x3 model (engine cost dominates).

Each setting runs ``predict_to_zarr`` (labels uint8 + probabilities float16) in a fresh
subprocess; wall time and the subprocess's peak RSS (``ru_maxrss``) are recorded. One factor
varies at a time around the defaults.

    python benchmarks/tuning.py                 # 8192^2
    python benchmarks/tuning.py --size 4096

Saves JSON to benchmarks/results/tuning.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def run_one(image: str, setting: dict) -> dict:
    import dask
    import zarr

    import chunkseg

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with dask.config.set(num_workers=setting["threads"]), \
                zarr.config.set({"async.concurrency": setting["concurrency"]}):
            chunkseg.predict_to_zarr(image, "benchmarks.overhead:conv3x3",
                                     os.path.join(tmp, "out.zarr"), tile=256, overlap=64,
                                     chunks=setting["chunk"], batch_size=8,
                                     outputs="probabilities,labels", dtype="float16",
                                     compression_level=setting["level"])
        seconds = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in Path(tmp, "out.zarr").rglob("*") if f.is_file())
    return {"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "output_mib": size / 2**20}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--out", default=str(HERE / "results" / "tuning.json"))
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], json.loads(args.one[1]))))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks.scale import write_texture

    base = {"chunk": 1536, "threads": 2, "concurrency": 10, "level": 3}
    variants = [dict(base)]
    variants += [dict(base, chunk=c) for c in (768, 2112, 3072)]
    variants += [dict(base, threads=t) for t in (1, 4)]
    variants += [dict(base, concurrency=c) for c in (2, 64)]
    variants += [dict(base, level=lv) for lv in (1, 9)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "image.zarr")
        write_texture(image, args.size)
        for v in variants:
            out = subprocess.run([sys.executable, __file__, "--one", image, json.dumps(v)],
                                 check=True, capture_output=True, text=True, env=env)
            r = dict(v, **json.loads(out.stdout.strip().splitlines()[-1]))
            r["mpix_per_s"] = args.size**2 / 1e6 / r["seconds"]
            rows.append(r)
            print(json.dumps(r), flush=True)
    lines = ["| chunk | dask threads | zarr async concurrency | zstd level | wall time (s) | "
             "Mpx/s | peak RSS (MiB) | output (MiB) |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['chunk']} | {r['threads']} | {r['concurrency']} | {r['level']} | "
                     f"{r['seconds']:.2f} | {r['mpix_per_s']:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['output_mib']:.0f} |")
    table = "\n".join(lines)
    print(f"{args.size}^2 uint8, 3x3 conv, tile 256, overlap 64, labels + float16 probabilities")
    print(table)
    meta = {"command": "python benchmarks/tuning.py " + " ".join(sys.argv[1:]),
            "size": args.size, "cpus": os.cpu_count()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "table": table},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
