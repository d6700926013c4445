"""Everything about writing: the life of every output chunkseg creates.

One package owns it (the target check, location identity, ownership, the writer's lease,
replace-on-success, array creation and whole-chunk writes, the manifest and resume, the
pyramid), and every writer goes through it: :func:`chunkseg.predict_to_zarr`,
:func:`chunkseg.ingest`, :func:`chunkseg.instances`, :func:`chunkseg.predict_instances`,
:func:`chunkseg.regions`, the demo, figures, reports, training runs and bioimage.io packages.

Modules: ``_target`` (may this location be written?), ``_arrays`` (Zarr array creation and
whole-chunk writes), ``_pyramid`` (out-of-core pyramid levels).
"""

from __future__ import annotations
