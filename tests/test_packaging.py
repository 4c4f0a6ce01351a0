"""The package list ships every perfd package (an editable install would hide a gap)."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "perfd").rglob("__init__.py")}
    assert present - listed == set()
    assert "perfd.probes" in listed
