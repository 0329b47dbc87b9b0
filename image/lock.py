"""``requirements-runtime.lock``: what the operator needs at run time, and nothing else.

``requirements.lock`` pins the development set (the ``dev`` extra: pytest, mypy, ruff
...). The image installs only the packages ``firebreak`` itself requires, found by
walking the ``Requires-Dist`` metadata of the installed distributions from
``firebreak`` down (markers evaluated for Linux and the locked Python, extras
followed only where a requirement names them). Their entries are copied from
``requirements.lock`` as they are: the same versions and the same hashes, so the two
files cannot disagree. ``python -m image.lock`` rewrites the file; a unit test fails
when it is stale.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DEV_LOCK = REPO / "requirements.lock"
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
ROOT = "firebreak"
HEADER = """\
# The packages firebreak needs at run time: its dependencies without extras, with the
# versions and hashes of requirements.lock. Written by `python -m image.lock` (make lock);
# installed into the image by `make image` and by the Dockerfile, with hashes required.
"""


def runtime_names(root: str = ROOT) -> set[str]:
    """Canonical names of every distribution ``root`` needs at run time (``root``
    itself excluded), from the metadata of what is installed."""
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(sys_platform="linux", platform_system="Linux", os_name="posix")
    found: set[str] = set()
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                    requirement.marker.evaluate({**environment, "extra": extra})
                    for extra in (extras or {""})):
                continue
            dependency = canonicalize_name(requirement.name)
            found.add(dependency)
            pending.append((dependency, frozenset(requirement.extras)))
    found.discard(canonicalize_name(root))
    return found


def entries(lock: str) -> dict[str, str]:
    """A uv/pip-compile lock file's entries by canonical name: the ``name==version``
    line and its hashes, without the ``# via`` comments."""
    found: dict[str, str] = {}
    current: list[str] | None = None
    name = ""
    for line in lock.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if match:
            name = canonicalize_name(match.group(1))
            current = [line]
            found[name] = line
            continue
        if current is not None and line.startswith("    --hash="):
            current.append(line)
            found[name] = "\n".join(current)
        else:
            current = None
    return found


def runtime_lock(dev_lock: str, names: set[str]) -> str:
    available = entries(dev_lock)
    missing = sorted(names - available.keys())
    if missing:
        raise SystemExit(f"requirements.lock does not pin {', '.join(missing)}")
    return HEADER + "".join(available[name] + "\n" for name in sorted(names))


def main() -> int:
    RUNTIME_LOCK.write_text(runtime_lock(DEV_LOCK.read_text(), runtime_names()))
    print(f"wrote {RUNTIME_LOCK.name}: {len(runtime_names())} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
