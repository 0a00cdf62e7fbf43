"""environment.yml (conda users) must list the same packages as pyproject.toml (pip)."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda name → pip name


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    return match.group(1).lower(), match.group(2).replace(" ", "")


def pip_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return dict(_split(r) for r in requirements)


def conda_requirements() -> dict[str, str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {}
    for item in environment["dependencies"]:
        if isinstance(item, dict):  # the pip: section
            item = item["pip"]
        for requirement in item if isinstance(item, list) else [item]:
            if requirement.startswith(("pip", "python", "-e")):
                continue
            name, bound = _split(requirement)
            listed[CONDA_NAMES.get(name, name)] = bound
    return listed


def test_environment_yml_matches_pyproject():
    assert conda_requirements() == pip_requirements()


def test_package_requirements_have_lower_bounds_only():
    for name, bound in pip_requirements().items():
        assert bound.startswith(">="), f"{name} should have a lower bound, not {bound!r}"
