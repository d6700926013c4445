"""The Python API in a few lines: segment a Zarr image with any callable, lazily, then write.

    python examples/quickstart.py
"""

import tempfile
from pathlib import Path

import numpy as np

import chunkseg

tmp = Path(tempfile.mkdtemp())
image = np.random.default_rng(0).integers(0, 256, (3000, 2000), dtype=np.uint8)
chunkseg.ingest(image, tmp / "image.zarr", chunks=1024)  # an OME-NGFF image, with a pyramid


def model(batch):  # float32 (N, C_in, y, x) -> logits (N, K, y, x)
    z = batch / 255.0 - 0.5
    return np.concatenate([z, -z], axis=1)


ds = chunkseg.predict(str(tmp / "image.zarr"), model, tile=256, overlap=64, window="cosine",
                      outputs="logits,probabilities,labels")  # lazy xarray.Dataset
print(ds)
written = chunkseg.predict_to_zarr(str(tmp / "image.zarr"), model, str(tmp / "seg.zarr"),
                                   tile=256, overlap=64, progress=True)
print(written.labels.mean().compute())
