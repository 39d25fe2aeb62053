"""What `pip install .` ships: every package of the source tree (a subpackage missing from pyproject.toml's list
would import in a checkout and fail in a wheel)."""

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_of_the_source_tree_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "snnrun").rglob("__init__.py")}
    assert found <= listed, f"not shipped in a wheel: {sorted(found - listed)}"
    for package, folder in setuptools.get("package-dir", {}).items():
        assert package in listed and (REPO / folder).is_dir()
