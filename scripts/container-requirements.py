r"""Print the requirements of one optional-dependency group of pyproject.toml, one per line.

The serving image installs its dependencies in a layer of their own, before the source is
copied, so that editing the code does not reinstall grpcio and onnxruntime. pip cannot install
"the dependencies of `.[serve-cpu]` without the project", so this script flattens the group
(following self-references such as ``sessionrec[serve-base]``) into a plain requirements file.
The same list drives the wheel download on the host (scripts/container-wheels.sh), so the image
and its offline wheelhouse never disagree.

    python scripts/container-requirements.py pyproject.toml serve-cpu > requirements.txt
    python scripts/container-requirements.py pyproject.toml serve \
        --with-extras onnxruntime-gpu=cuda,cudnn

Standard library only (tomllib, Python >= 3.11): it runs inside the bare base image.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# "name[extra1,extra2] <specifier> ; marker" -> name, extras, rest (specifier and marker).
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)$")


def _canonical(name: str) -> str:
    """PEP 503 normalised project name, so `Foo_Bar` and `foo-bar` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def flatten(pyproject: dict, group: str) -> list[str]:
    """Requirements of optional-dependency `group` with self-references expanded.

    Base `project.dependencies` are included. Raises KeyError naming the missing group.
    """
    project = pyproject["project"]
    own = _canonical(project["name"])
    groups = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        if name not in groups:
            known = ", ".join(sorted(groups))
            raise KeyError(f"no optional-dependency group {name!r} in pyproject.toml ({known})")
        seen.add(name)
        for req in groups[name]:
            match = _REQ.match(req)
            if match and _canonical(match.group(1)) == own:
                for extra in (match.group(2) or "").split(","):
                    if extra.strip():
                        visit(extra.strip())
            else:
                out.append(req)

    visit(group)
    return list(dict.fromkeys(out))  # drop duplicates, keep order


def add_extras(reqs: list[str], name: str, extras: str) -> list[str]:
    """Give requirement `name` the extras `extras` (e.g. onnxruntime-gpu -> onnxruntime-gpu[cuda]).

    Raises ValueError when `name` is not among `reqs`, so a renamed package cannot silently
    drop the CUDA libraries from the GPU image.
    """
    result, found = [], False
    for req in reqs:
        match = _REQ.match(req)
        if match and _canonical(match.group(1)) == _canonical(name):
            found = True
            req = f"{match.group(1)}[{extras}]{match.group(3)}"
        result.append(req)
    if not found:
        raise ValueError(f"{name!r} is not a requirement of this group; cannot add [{extras}]")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("group", help="optional-dependency group, e.g. serve-cpu")
    parser.add_argument(
        "--with-extras",
        default="",
        metavar="NAME=EXTRA[,EXTRA]",
        help="add extras to one requirement (the GPU image uses onnxruntime-gpu=cuda,cudnn)",
    )
    args = parser.parse_args(argv)
    try:
        reqs = flatten(tomllib.loads(args.pyproject.read_text()), args.group)
        if args.with_extras:
            name, _, extras = args.with_extras.partition("=")
            reqs = add_extras(reqs, name.strip(), extras.strip())
    except (KeyError, ValueError) as err:
        print(f"container-requirements: {err.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(reqs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
