"""The public API: every exported name resolves, public functions live in public modules, and
the old name of connected-component labelling still works with a warning."""

from __future__ import annotations

import importlib

import pytest

import chunkseg

PACKAGES = ("kernels", "models", "engine", "objects", "training", "evaluation", "viz", "io",
            "outputs")


def test_every_exported_name_resolves():
    for name in chunkseg.__all__:
        assert getattr(chunkseg, name) is not None, name


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_export_only_their_own_public_names(package):
    mod = importlib.import_module(f"chunkseg.{package}")
    for name in getattr(mod, "__all__", ()):
        obj = getattr(mod, name)
        assert not name.startswith("_"), (package, name)
        home = getattr(obj, "__module__", None)
        if home is not None and callable(obj):  # defined in this package, not re-exported
            assert home.startswith(f"chunkseg.{package}"), (package, name, home)


def test_public_functions_live_in_public_modules():
    for name in ("predict", "predict_to_zarr", "label", "regions", "predict_instances", "evaluate",
                 "evaluate_instances", "seam_report", "plan_tiles", "open_image", "as_model"):
        home = getattr(chunkseg, name).__module__
        assert not any(part.startswith("_") for part in home.split(".")), (name, home)


def test_label_is_connected_components_and_instances_is_its_old_name():
    assert "label" in chunkseg.__all__ and "instances" not in chunkseg.__all__
    with pytest.warns(DeprecationWarning, match="chunkseg.label"):
        old = chunkseg.instances
    assert old is chunkseg.label


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        chunkseg.nope  # noqa: B018
