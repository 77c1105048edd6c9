"""Print the third-party requirements of lamina and some of its extras, one a line.

    python3 hack/requirements.py pyproject.toml operator        # base + [operator]
    python3 hack/requirements.py pyproject.toml server           # base + [server]

The image definitions install these before copying the source, so a change to the
code does not rebuild the dependency layer. Standard library only (tomllib).
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: dict[str, object], extras: list[str]) -> list[str]:
    """The project's dependencies plus those of the named extras, in order, no repeats."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    out: list[str] = []
    for req in [*project.get("dependencies", []), *(r for e in extras for r in optional[e])]:
        if req not in out:
            out.append(req)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], "rb") as f:
        print("\n".join(requirements(tomllib.load(f), sys.argv[2:])))
