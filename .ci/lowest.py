"""Write pip constraints that hold each requirement of pyproject.toml at its lower bound.

Usage: ``python .ci/lowest.py [EXTRA ...] > lowest.txt`` (no EXTRA: every extra), then
``pip install -c lowest.txt -e ".[objects]" pytest``: whatever is installed of the base
dependencies and the extras is held at exactly the ``>=`` bound pyproject.toml gives it (a
constraint binds only what gets installed; the dependencies of those packages resolve as usual),
so the tests that run there prove that the bounds are true. A requirement without a ``>=``
bound (an ``==`` pin, a self-reference such as ``chunkseg[torch]``) is left alone; the first
bound given for a name wins.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# name[extras] >= version, optionally followed by ",<..." or an environment marker
_LOWER = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)")


def lowest_constraints(pyproject: Path, extras: list[str]) -> list[str]:
    """``name==lower`` lines for the base dependencies and ``extras``, in pyproject's order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    extras = extras or list(optional)
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"lowest.py: no extra {unknown} in {pyproject} (has {sorted(optional)})")
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += optional[extra]
    lines: dict[str, str] = {}
    for req in requirements:
        m = _LOWER.match(req)
        if m:
            lines.setdefault(m.group(1).lower(), f"{m.group(1)}=={m.group(2)}")
    return list(lines.values())


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(lowest_constraints(root / "pyproject.toml", sys.argv[1:])))
