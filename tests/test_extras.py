"""pyproject.toml's extras leave torch to the user: a CPU build installed first stays.

PyPI's torch for x86_64 Linux is a CUDA build (about 3.2 GB of nvidia-* packages), so a CPU-only
install puts torch's CPU wheel in first (README, "Install"; docs/install.md). That only helps if nothing
the extras bring asks for a torch release the CPU wheel is not: each torchvision release needs
the torch of its own release or newer (0.28.0: ``torch==2.13.0``; 0.29.1: ``torch>=2.14.0``), so
pip takes the newest torchvision and swaps the CPU build for PyPI's CUDA one (measured here: a
1.9 GB venv without, 6.6 GB with ``train`` in ``all``), and PyPI's torchvision 0.28.0 does not
import beside the CPU torch 2.13.0 ("operator torchvision::nms does not exist"). These tests
expand each extra from pyproject.toml (the self-references ``chunkseg[...]`` included) and walk
the requirements of whatever of it is installed here (``importlib.metadata``), stopping at torch,
whose own requirements depend on the build chosen.
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
_EXTRAS: dict[str, list[str]] = _PROJECT["optional-dependencies"]

# Extras that need torchvision, on purpose: on a CPU machine torch and torchvision come together
# from PyTorch's CPU index (docs/install.md); `dev` pins the pair CI tests.
TORCHVISION_EXTRAS = {"train", "dev"}
# Packages that tie torch to their own release; name prefixes of CUDA builds.
TORCH_PINNERS = {"torchvision", "torchaudio"}
CUDA_PREFIXES = ("nvidia-", "cupy-cuda", "onnxruntime-gpu", "jax-cuda")


def _expand(extra: str) -> list[Requirement]:
    """The base dependencies and ``extra``'s requirements, self-references expanded."""
    out = [Requirement(r) for r in _PROJECT["dependencies"]]
    todo, done = [extra], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        for line in _EXTRAS[name]:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(_PROJECT["name"]):
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def _walk(requirements: list[Requirement]) -> list[tuple[str, Requirement]]:
    """Every (parent, requirement) reachable through the installed distributions' metadata.

    A requirement's own requirements are followed when its distribution is installed, with the
    environment markers evaluated here for the extras it asks for; torch is a leaf.
    """
    found: list[tuple[str, Requirement]] = []
    stack = [("chunkseg", r) for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    while stack:
        parent, req = stack.pop()
        found.append((parent, req))
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if name == "torch" or key in done:
            continue
        done.add(key)
        try:
            lines = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        extras = set(req.extras) | {""}
        for line in lines:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                stack.append((name, sub))
    return found


def _torch_pins(found: list[tuple[str, Requirement]]) -> list[str]:
    """The requirements on torch that pin a release (``==``, ``===``)."""
    return [f"{parent} requires {req}" for parent, req in found
            if canonicalize_name(req.name) == "torch"
            and any(s.operator in ("==", "===") for s in req.specifier)]


@pytest.mark.parametrize("extra", sorted(set(_EXTRAS) - TORCHVISION_EXTRAS))
def test_extra_leaves_torch_to_the_user(extra: str) -> None:
    found = _walk(_expand(extra))
    names = {canonicalize_name(req.name): parent for parent, req in found}
    pinners = {n: p for n, p in names.items() if n in TORCH_PINNERS}
    cuda = {n: p for n, p in names.items() if n.startswith(CUDA_PREFIXES)}
    assert not pinners, f"[{extra}] pulls in {pinners} (name: required by), which tie torch to their own release"
    assert not cuda, f"[{extra}] pulls in CUDA packages {cuda} (name: required by)"
    assert not _torch_pins(found), f"[{extra}]: {_torch_pins(found)}"


def test_walk_reaches_torchvision_from_train() -> None:
    """The control: from ``train`` the walk goes through the installed segmentation-models-pytorch
    and timm to torchvision, and reads torchvision's own requirement on torch."""
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("torchvision")
    found = _walk(_expand("train"))
    parents = {canonicalize_name(req.name): set() for _, req in found}
    for parent, req in found:
        parents[canonicalize_name(req.name)].add(parent)
    assert {"segmentation-models-pytorch", "timm"} <= parents["torchvision"], parents["torchvision"]
    assert "torchvision" in parents["torch"], parents["torch"]
    assert "onnx" not in parents, "the walk strays outside train's requirements"
