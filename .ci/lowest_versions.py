"""Print a pip constraints file pinning each requirement of pyproject.toml (core and extras) to the
lowest release its range admits, as found in the package index. ``--keep NAME==VERSION`` pins a
package elsewhere (the torch this machine installs) and ``--raise NAME==VERSION`` lifts a bound that
a dependency's own pin makes unreachable; both say why in .ci/lowest-versions."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def released_versions(name: str) -> list[Version]:
    # `pip index versions` (pip >= 21.2) asks every index pip is configured with, local ones too.
    result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True)
    line = next((line for line in result.stdout.splitlines() if line.startswith("Available versions:")), None)
    if result.returncode or line is None:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"pip index versions {name} listed no versions: {reason}")
    return sorted(Version(v.strip()) for v in line.split(":", 1)[1].split(","))


def requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    texts = [*project["dependencies"], *(t for extra in project["optional-dependencies"].values() for t in extra)]
    found: dict[str, Requirement] = {}
    for text in texts:
        requirement = Requirement(text)
        if not requirement.name.startswith("glm4v-edge"):  # the "all" extra names the others
            found.setdefault(requirement.name, requirement)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--skip", action="append", default=[], help="leave a package out (another extra's)")
    parser.add_argument("--keep", action="append", default=[], help="NAME==VERSION instead of the lowest")
    parser.add_argument("--raise", dest="lifted", action="append", default=[], help="NAME==VERSION: a lifted bound")
    args = parser.parse_args()
    fixed = {Requirement(text).name: text for text in (*args.keep, *args.lifted)}
    for name, requirement in requirements(args.pyproject).items():
        if name in args.skip:
            continue
        if name in fixed:
            print(fixed[name])
            continue
        admitted = [v for v in released_versions(name) if v in requirement.specifier and not v.is_prerelease]
        if not admitted:
            sys.exit(f"no release of {name} satisfies {requirement.specifier}")
        print(f"{name}=={admitted[0]}")


if __name__ == "__main__":
    main()
