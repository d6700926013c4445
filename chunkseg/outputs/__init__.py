"""Everything about writing: the life of every output chunkseg creates.

One package owns it (the target check, location identity, ownership, the writer's lease,
replace-on-success, array creation and whole-chunk writes, the manifest and resume, the
pyramid), and every writer goes through it: :func:`chunkseg.predict_to_zarr`,
:func:`chunkseg.ingest`, :func:`chunkseg.label`, :func:`chunkseg.predict_instances`,
:func:`chunkseg.regions`, the demo, figures, reports, training runs and bioimage.io packages.

Modules, each one job:

- ``_identity``: one identity per location, however it is named (real paths, device and
  inode, canonical object-store protocols); overlap is decided on identities.
- ``_target``: may this location be written? (never an input, never data chunkseg did not
  write; Zarr stores, folders and single files).
- ``_ownership``: what chunkseg created, recorded as it creates it (a stamp on every Zarr node,
  a record file for folders), and the walk that finds anything else at any depth.
- ``_lease``: one writer per output (an exclusive lease file beside it).
- ``_lifecycle``: :func:`~chunkseg.outputs._lifecycle.writing`, the check, lease, staging and
  swap every Zarr writer wraps its writes in.
- ``_arrays``: Zarr array creation and whole-chunk writes (a failed write names the chunk).
- ``_manifest``: the completion manifest, the fingerprint, resume's checks, opening an output.
- ``_pyramid``: out-of-core pyramid levels.
- ``_variables``: the arrays, codecs, attrs and coordinates of a prediction's variables, and
  their whole-chunk writes.
"""

from __future__ import annotations
