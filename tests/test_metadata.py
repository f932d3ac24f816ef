"""The project's documents agree with the package."""

import re
from pathlib import Path

import kdloss

ROOT = Path(__file__).resolve().parents[1]


def test_citation_names_this_version():
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(r'^version: "([^"]+)"$', citation, flags=re.MULTILINE).group(1) == kdloss.__version__


def test_changelog_starts_with_the_work_not_yet_released():
    headings = re.findall(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings[0].startswith("Unreleased")
