"""Cells on held-out ISBI 2012 sections 20-24: V_rand, V_info, Rand error, VI, object F1.

The objects ISBI 2012 scored are the cells, separated by membrane. For each held-out section
the shipped U-Net's probabilities are written by ``predict_to_zarr`` (tile 256, overlap 64,
gaussian, 256 px chunks: the section is cut into 2 x 2 chunks), then each instance method of
``chunkseg.label`` writes its own array (class 0, the cells):

- *components*: connected components of the argmax labels (``method="components"``);
- *watershed*: ``method="watershed"`` with its defaults (seeds at probability >= 0.98 of at
  least 10 px, flooded over the membrane probability, no merging);
- *watershed + threshold merge T*: the same with ``merge_threshold=T`` (``--merge``);
- further methods with ``--extra NAME=JSON`` (keyword arguments of ``chunkseg.label``).

Each is scored by ``chunkseg.evaluate_instances`` (``chunkseg evaluate OUT LABEL.png
--instances --truth-class 255``): the challenge's V_rand and V_info after thinning, the
adapted Rand error and VI split/merge (scikit-image's definitions, bits), object F1 at IoU 0.5,
averaged over the five sections.

    python benchmarks/heldout_instances.py
    python benchmarks/heldout_instances.py --merge 0.05,0.1 --extra 'mutex={"agglomeration": "mutex"}'

Saves JSON to benchmarks/results/heldout_instances.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chunkseg  # noqa: E402
from benchmarks._isbi import VAL_SECTIONS  # noqa: E402

KEYS = ("v_rand", "v_info", "adapted_rand_error", "vi_split", "vi_merge", "vi", "object_f1",
        "objects_pred", "objects_true")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data" / "isbi2012" / "train"))
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--merge", default="0.1", help="merge thresholds to try, comma-separated")
    p.add_argument("--extra", action="append", default=[],
                   help="NAME=JSON: another method, as keyword arguments of chunkseg.label")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        "heldout_instances.json"))
    args = p.parse_args(argv)
    methods = {"components": {"method": "components"}, "watershed": {"method": "watershed"}}
    for t in (float(x) for x in args.merge.split(",") if x):
        methods[f"watershed + threshold merge {t:g}"] = {"method": "watershed",
                                                          "merge_threshold": t}
    for item in args.extra:
        name, _, spec = item.partition("=")
        methods[name] = json.loads(spec)
    per: dict[str, list] = {m: [] for m in methods}
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        for s in VAL_SECTIONS:
            image, truth = data / "image" / f"{s:02d}.png", data / "label" / f"{s:02d}.png"
            out = str(Path(tmp) / f"section-{s}.zarr")
            chunkseg.predict_to_zarr(str(image), "isbi2012-unet", out, tile=256, overlap=64,
                                     chunks=args.chunk, outputs="probabilities,labels")
            for i, (name, kwargs) in enumerate(methods.items()):
                chunkseg.label(out, cls=0, name=f"m{i}", **kwargs)
                r = chunkseg.evaluate_instances(out, str(truth), truth_class=255,
                                                pred_variable=f"m{i}")
                per[name].append({k: float(r[k]) for k in KEYS})
                print(f"  section {s}, {name}: V_rand {r['v_rand']:.4f}", file=sys.stderr,
                      flush=True)
    rows = [{"method": m, "kwargs": methods[m],
             **{k: float(np.mean([x[k] for x in per[m]])) for k in KEYS}} for m in methods]
    lines = ["| method | V_rand | V_info | adapted Rand error | VI split | VI merge | VI | "
             "object F1 | objects per section |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['method']} | {r['v_rand']:.4f} | {r['v_info']:.4f} | "
                     f"{r['adapted_rand_error']:.4f} | {r['vi_split']:.3f} | "
                     f"{r['vi_merge']:.3f} | {r['vi']:.3f} | {r['object_f1']:.3f} | "
                     f"{r['objects_pred']:.1f} |")
    table = "\n".join(lines)
    print(f"ISBI 2012 sections {list(VAL_SECTIONS)} (held out), {args.chunk} px chunks; "
          f"ground truth: {np.mean([x['objects_true'] for x in per['components']]):.1f} cells "
          "per section")
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/heldout_instances.py " + " ".join(sys.argv[1:]),
        "chunk": args.chunk, "rows": rows, "per_section": per, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
