"""requirements.lock (written by `make lock`) pins every requirement of pyproject.toml, dev extra included,
at a version that pyproject's specifier allows. When this fails: `make lock` (README: upgrading a dependency)."""

import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import ROOT


def read_lock(text: str) -> dict[str, Version]:
    """name -> pinned version; every line must be an exact `name==version` pin."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or "*" in spec[0].version:
            raise ValueError(f"requirements.lock: {line!r} is not an exact pin")
        pins[canonicalize_name(req.name)] = Version(spec[0].version)
    return pins


def project_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return reqs


def disagreements(pyproject: dict, pins: dict[str, Version]) -> list[str]:
    out = []
    for req in project_requirements(pyproject):
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            out.append(f"{req} is not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            out.append(f"{req} but the lock pins {req.name}=={pinned}")
    if canonicalize_name(pyproject["project"]["name"]) in pins:
        out.append("the lock pins the project itself; it is installed editable")
    return out


def test_the_lock_pins_every_pyproject_requirement_within_its_specifier():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = read_lock((ROOT / "requirements.lock").read_text())
    assert disagreements(pyproject, pins) == []
    assert len(pins) > 100  # every transitive dependency, not just the direct ones


def test_the_servers_pins_hold_in_the_lock():
    # ENVIRONMENT.md: fastapi >= 0.151 breaks Prefect's local server; SQLAlchemy 2.1 broke its scheduler.
    pins = read_lock((ROOT / "requirements.lock").read_text())
    assert pins["prefect"] < Version("3.10") and pins["fastapi"] < Version("0.151")
    assert pins["sqlalchemy"] < Version("2.1") and pins["torch"] == Version("2.13.0")


def test_a_disagreement_is_reported():
    pyproject = {"project": {"name": "tunegate", "dependencies": ["prefect>=3.8,<3.10", "openai>=3.50", "numpy"],
                             "optional-dependencies": {"dev": ["pytest>=8"]}}}
    pins = read_lock("prefect==3.10.0\nopenai==3.57.0\npytest==7.4.0\ntunegate==0.1.0\n")
    assert disagreements(pyproject, pins) == [
        "prefect<3.10,>=3.8 but the lock pins prefect==3.10.0",
        "numpy is not in the lock",
        "pytest>=8 but the lock pins pytest==7.4.0",
        "the lock pins the project itself; it is installed editable",
    ]


def test_a_loose_line_in_the_lock_is_refused():
    with pytest.raises(ValueError, match="not an exact pin"):
        read_lock("prefect>=3.8\n")
