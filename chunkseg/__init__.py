"""chunkseg: seamless out-of-core segmentation of huge images with Dask and Zarr.

A global tile grid is laid over the image; every tile runs through the model once, its logits
are weighted by a blending window, and an overlap-add reduction across Dask chunks gives a
seamless result that does not depend on the chunking. See :func:`predict`.
"""

from __future__ import annotations

from ._ingest import ingest
from ._version import __version__
from .engine import OUTPUTS, predict, predict_to_zarr
from .errors import (
    ChunkAlignmentError,
    ChunksegError,
    Float16OverflowWarning,
    IncompleteOutputWarning,
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
    LargeObjectWarning,
    MissingDependencyError,
    ModelOutputError,
    ModelRunError,
    NotFoundError,
    OutputExistsError,
    OutputLockedError,
    OutputOverlapError,
    OutputWriteError,
    RunInterruptedError,
    SchedulerError,
)
from .evaluation.instances import evaluate_instances
from .evaluation.seams import seam_report
from .evaluation.semantic import evaluate
from .io import open_image
from .kernels.windows import WINDOWS, get_window
from .models.load import as_model, load_model
from .models.spec import ModelSpec, Normalization
from .objects.instances import label
from .objects.regions import regions
from .objects.tile_instances import predict_instances
from .outputs.api import open_output, output_progress
from .plan import TilePlan, plan_tiles
from .training.augment import augmentation


def __getattr__(name: str):  # PatchDataset imports torch: it loads on first use
    if name == "instances":  # the name of `label` before 0.2
        import warnings

        warnings.warn("chunkseg.instances is now chunkseg.label (connected-component labelling); "
                      "the old name will be removed", DeprecationWarning, stacklevel=2)
        return label
    if name == "PatchDataset":
        from .training.patches import PatchDataset

        return PatchDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "predict",
    "predict_to_zarr",
    "open_output",
    "output_progress",
    "OUTPUTS",
    "label",
    "regions",
    "predict_instances",
    "plan_tiles",
    "TilePlan",
    "seam_report",
    "get_window",
    "WINDOWS",
    "ModelSpec",
    "Normalization",
    "as_model",
    "load_model",
    "open_image",
    "ingest",
    "PatchDataset",
    "augmentation",
    "evaluate",
    "evaluate_instances",
    "ChunksegError",
    "InvalidValueError",
    "InvalidTypeError",
    "NotFoundError",
    "MissingDependencyError",
    "InputReadError",
    "OutputWriteError",
    "ModelOutputError",
    "ModelRunError",
    "OutputExistsError",
    "OutputLockedError",
    "OutputOverlapError",
    "ChunkAlignmentError",
    "RunInterruptedError",
    "SchedulerError",
    "IncompleteOutputWarning",
    "LargeObjectWarning",
    "Float16OverflowWarning",
]
