"""Are the demo's outputs bit-identical between two source trees?

Runs ``python -m chunkseg.cli demo`` once for each tree (a subprocess of this same python with
``PYTHONPATH=<tree>``, the same small settings on both sides), then compares everything the demo
wrote::

    python benchmarks/demo_identity.py --base /work/base --new /work/main [--work DIR]

Both runs write to the same path (``DIR/run``, moved to ``DIR/base`` and ``DIR/new`` afterwards),
so the paths recorded in the attributes (``source``, ``fingerprint.source``) are equal and need
not be excluded. Compared:

- the file list of each output folder (every file, Zarr chunk files included);
- every ``zarr.json``: the whole document (node type, shape, data type, chunk grid, codecs,
  fill value, dimension names) and its ``attributes``, except the keys in :data:`IGNORED_ATTRS`;
- every Zarr array's values (bit for bit: NaNs equal, ``-0.0 != 0.0``), dtype, shape and chunks;
- ``regions.parquet`` byte for byte, else as tables (schema and values, exact);
- every PNG byte for byte, else pixel for pixel (decoded with pillow);
- any other file byte for byte;
- the CLI's printed summary, with the one timing (``predicted and written in N s``) masked.

Prints a report and exits 1 on any difference (0 when identical, 2 when a run fails).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IGNORED_ATTRS: dict[str, str] = {
    "chunkseg_version": "the package version string; written on every node",
}
"""Attribute keys (at any depth of a node's ``attributes``) left out of the comparison, with why.

The demo writes no timestamps, host names or process ids into its outputs (the lease that holds
them is removed when the run ends), and both runs use one output path, so paths are equal."""

# the smallest demo that still has chunk seams in both directions: a 1 x 2 mosaic of 512 px
# sections (512 x 1024 px) in 384 px chunks (2 x 3 chunks, 18 tiles of 256 px, overlap 64)
DEMO_ARGS = ["--rows", "1", "--cols", "2", "--chunk", "384", "--no-progress"]

_TIMING = re.compile(r"predicted and written in [0-9.]+ s")


def run_demo(tree: Path, run_dir: Path, dest: Path, extra: list[str]) -> tuple[str, float]:
    """Run the demo of ``tree`` into ``run_dir``, move the result to ``dest``; stdout, seconds."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = ("import chunkseg, sys; sys.stderr.write(f'chunkseg from {chunkseg.__file__}\\n'); "
            "from chunkseg.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, "demo", "--out", str(run_dir), *DEMO_ARGS, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=run_dir.parent)
    seconds = time.perf_counter() - t0
    origin = proc.stderr.splitlines()[0] if proc.stderr else ""
    if proc.returncode != 0 or not origin.startswith(f"chunkseg from {tree}"):
        sys.stderr.write(f"demo of {tree} failed (exit {proc.returncode}; {origin!r}):\n"
                         f"{proc.stdout}\n{proc.stderr}\n")
        raise SystemExit(2)
    if dest.exists():
        shutil.rmtree(dest)
    run_dir.rename(dest)
    return proc.stdout, seconds


def _strip(attrs, path: str, ignored: dict[str, object]):
    """``attrs`` without the :data:`IGNORED_ATTRS` keys (recursively); records what was dropped."""
    if isinstance(attrs, dict):
        out = {}
        for k, v in attrs.items():
            if k in IGNORED_ATTRS:
                ignored[f"{path}.{k}"] = v
                continue
            out[k] = _strip(v, f"{path}.{k}", ignored)
        return out
    if isinstance(attrs, list):
        return [_strip(v, f"{path}[{i}]", ignored) for i, v in enumerate(attrs)]
    return attrs


def _json_diff(a, b, path: str = "") -> list[str]:
    """Where two JSON values differ (first few places)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in {'base' if k in a else 'new'}" for k in sorted(a.keys() ^ b.keys())]
        for k in sorted(a.keys() & b.keys()):
            out += _json_diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def compare_zarr_node(base: Path, new: Path, rel: str, report: list[str],
                      ignored: tuple[dict, dict]) -> bool:
    """Compare one ``zarr.json`` (metadata and attributes) and, for an array, its values."""
    import zarr

    meta = [json.loads((root / rel).read_text()) for root in (base, new)]
    stripped = []
    for m, dropped in zip(meta, ignored):
        stripped.append({**m, "attributes": _strip(m.get("attributes", {}), rel, dropped)})
    diffs = _json_diff(*stripped)
    ok = not diffs
    for d in diffs[:10]:
        report.append(f"DIFF {rel}: {d}")
    if meta[0].get("node_type") != "array" or meta[1].get("node_type") != "array":
        if ok:
            report.append(f"same {str(Path(rel).parent)}: group metadata and attributes")
        return ok
    node = str(Path(rel).parent)
    arrays = [zarr.open_array(str(root / node), mode="r") for root in (base, new)]
    a, b = (arr[...] for arr in arrays)
    # strings (numpy StringDType, objects) by value: their buffers hold pointers
    text = a.dtype.kind in "OT" or b.dtype.kind in "OT"
    same = (a.dtype == b.dtype and a.shape == b.shape and arrays[0].chunks == arrays[1].chunks
            and (a.tolist() == b.tolist() if text else a.tobytes() == b.tobytes()))
    desc = f"{node}: {a.dtype} {a.shape} chunks {arrays[0].chunks}"
    if same:
        report.append(f"same {desc}, values bit-identical")
        return ok
    if a.shape != b.shape or a.dtype != b.dtype:
        report.append(f"DIFF {desc} vs {b.dtype} {b.shape} chunks {arrays[1].chunks}")
    elif text:
        report.append(f"DIFF {desc}: {a.tolist()} != {b.tolist()}")
    else:
        differ = a != b
        if a.dtype.kind == "f":
            differ &= ~(np.isnan(a) & np.isnan(b))
        n = int(np.count_nonzero(differ)) or int(np.count_nonzero(
            a.view(np.uint8) != b.view(np.uint8)))
        worst = (float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                 if a.dtype.kind in "fiu" and a.size else float("nan"))
        report.append(f"DIFF {desc}: {n} elements differ (max |diff| {worst:g}); "
                      f"chunks {arrays[0].chunks} vs {arrays[1].chunks}")
    return False


def compare_png(a: Path, b: Path) -> tuple[bool, str]:
    """Byte for byte, else pixel for pixel."""
    if a.read_bytes() == b.read_bytes():
        return True, "bytes identical"
    from PIL import Image

    pa, pb = (np.asarray(Image.open(p)) for p in (a, b))
    if pa.shape == pb.shape and np.array_equal(pa, pb):
        return True, f"pixels identical {pa.shape} (bytes differ: metadata)"
    if pa.shape != pb.shape:
        return False, f"image shape {pa.shape} != {pb.shape}"
    n = int(np.count_nonzero((pa != pb).any(axis=-1) if pa.ndim == 3 else pa != pb))
    return False, f"{n} of {pa.shape[0] * pa.shape[1]} pixels differ"


def compare_parquet(a: Path, b: Path) -> tuple[bool, str]:
    """Byte for byte, else schema and values exactly (pyarrow)."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    shape = f"{ta.num_rows} rows x {ta.num_columns} columns"
    if a.read_bytes() == b.read_bytes():
        return True, f"bytes identical ({shape})"
    if ta.equals(tb, check_metadata=True):
        return True, f"table identical, schema metadata included ({shape}; bytes differ)"
    if not ta.schema.equals(tb.schema):
        return False, f"schema differs: {ta.schema} vs {tb.schema}"
    cols = [c for c in ta.column_names if not ta[c].equals(tb[c])]
    return False, f"{shape} vs {tb.num_rows} rows; columns that differ: {cols}"


def compare_trees(base: Path, new: Path) -> tuple[bool, list[str]]:
    """Compare two demo output folders: (identical, report lines)."""
    report: list[str] = []
    ignored: tuple[dict, dict] = ({}, {})
    files = [{str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
             for root in (base, new)]
    ok = files[0] == files[1]
    for rel in sorted(files[0] - files[1]):
        report.append(f"DIFF only in base: {rel}")
    for rel in sorted(files[1] - files[0]):
        report.append(f"DIFF only in new: {rel}")
    report.append(f"{'same' if ok else 'DIFF'} file list: {len(files[0])} files in base, "
                  f"{len(files[1])} in new")
    for rel in sorted(files[0] & files[1]):
        a, b = base / rel, new / rel
        if rel.endswith("zarr.json"):
            ok &= compare_zarr_node(base, new, rel, report, ignored)
        elif ".zarr/" in rel:
            continue  # chunk files: compared as the array's values above
        elif rel.endswith(".png"):
            same, how = compare_png(a, b)
            ok &= same
            report.append(f"{'same' if same else 'DIFF'} {rel}: {how}")
        elif rel.endswith(".parquet"):
            same, how = compare_parquet(a, b)
            ok &= same
            report.append(f"{'same' if same else 'DIFF'} {rel}: {how}")
        else:
            same = a.read_bytes() == b.read_bytes()
            ok &= same
            report.append(f"{'same' if same else 'DIFF'} {rel}: bytes")
    keys = sorted(ignored[0].keys() | ignored[1].keys())
    differ = [k for k in keys if ignored[0].get(k, "<absent>") != ignored[1].get(k, "<absent>")]
    report.append(f"ignored {len(keys)} attributes ("
                  + "; ".join(f"{k}: {why}" for k, why in IGNORED_ATTRS.items()) + "); "
                  + (f"their values differ at {differ}" if differ else "their values are equal"))
    return ok, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="source tree of the reference")
    p.add_argument("--new", type=Path, required=True, help="source tree to check")
    p.add_argument("--work", type=Path, default=Path("demo-identity"),
                   help="folder for both runs' outputs (demo-identity; replaced)")
    p.add_argument("--demo-args", default="",
                   help=f"extra demo options for both runs, after {' '.join(DEMO_ARGS)}")
    p.add_argument("--outputs-only", action="store_true",
                   help="run nothing: compare the folders --base and --new as demo outputs")
    args = p.parse_args(argv)
    if args.outputs_only:
        ok, report = compare_trees(args.base, args.new)
        print("\n".join(report) + ("\nIDENTICAL" if ok else "\nDIFFERENT"))
        return 0 if ok else 1
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    extra = args.demo_args.split()
    outs = {}
    for side in ("base", "new"):
        tree = getattr(args, side).resolve()
        stdout, seconds = run_demo(tree, work / "run", work / side, extra)
        outs[side] = stdout
        print(f"{side}: {tree} ({seconds:.0f} s)")
    print(f"demo {' '.join(DEMO_ARGS + extra)}; python {sys.executable}")
    ok, report = compare_trees(work / "base", work / "new")
    masked = [_TIMING.sub("predicted and written in <N> s", outs[s]).replace(str(work / "run"), "<out>")
              for s in ("base", "new")]
    same_out = masked[0] == masked[1]
    ok &= same_out
    report.append(f"{'same' if same_out else 'DIFF'} printed summary (timing masked)")
    if not same_out:
        report += [f"  base: {masked[0]}", f"  new:  {masked[1]}"]
    print("\n".join(report))
    print("IDENTICAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
