"""Regenerate every file derived from the typed LLMDeployment model (`make generate`).

crds/ and charts/lamina/crds/ get the CRD; README.md gets the field reference between
its crd-reference markers. Tests fail when any of them is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from lamina_operator.crd import render_crd_yaml, render_reference_markdown

REPO = Path(__file__).resolve().parents[1]
CRD_FILES = [
    REPO / "crds" / "lamina.dev_llmdeployments.yaml",
    REPO / "charts" / "lamina" / "crds" / "lamina.dev_llmdeployments.yaml",
]
START, END = "<!-- crd-reference:start -->", "<!-- crd-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """README.md with its reference section replaced by the generated one."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    return pattern.sub(lambda _: f"{START}\n{render_reference_markdown()}{END}", readme)


def main() -> None:
    crd = render_crd_yaml()
    for path in CRD_FILES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(crd)
    readme = REPO / "README.md"
    readme.write_text(readme_with_reference(readme.read_text()))


if __name__ == "__main__":
    main()
