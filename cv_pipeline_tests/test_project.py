"""The install is reproducible: constraints.txt pins every package to the versions the tests passed with,
and it agrees with what pyproject.toml asks for: each direct dependency (all extras) is pinned to a version
its specifier allows, so a dependency added or bumped there without re-pinning fails here, not on a fresh
machine months later. (The transitive pins come from `make lock`, i.e. pip freeze of a tested .venv.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        assert m is not None, f"constraints.txt line {number} is not 'name==version': {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(m.group(2))
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_every_dependency_is_pinned_to_a_version_pyproject_allows():
    pins = _pins()
    missing, outside = [], []
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            missing.append(req.name)
        elif not req.specifier.contains(pin, prereleases=True):
            outside.append(f"{req} (pinned {pin})")
    assert not missing, f"not in constraints.txt (run `make lock` after the tests pass): {missing}"
    assert not outside, f"constraints.txt pins versions pyproject.toml excludes: {outside}"


def test_the_pins_include_the_training_stack_the_readme_names():
    # The README's figures were measured with these; an unpinned Unsloth would pull whatever is newest.
    pins = _pins()
    for name in ("unsloth", "unsloth-zoo", "trl", "transformers", "peft", "torch", "dagster", "selectolax"):
        assert canonicalize_name(name) in pins, name


def test_bootstrap_installs_through_the_constraints():
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    installs = [line for line in script.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs, "bootstrap.sh installs nothing?"
    for line in installs:
        assert "-c constraints.txt" in line, f"installs without the pins: {line.strip()}"
    # A change to the pins re-runs the install on the next `make`.
    assert "constraints.txt" in script.split("stamp=", 1)[1].splitlines()[0]
