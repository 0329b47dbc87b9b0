"""Debian packages, fetched and unpacked without dpkg: the root file system of the
operator's image.

Which packages: the roots named in ``image/debian-packages`` and everything they
depend on (``Depends`` and ``Pre-Depends``, never ``Recommends``), as this machine's
apt resolves them, less the few that only maintainer scripts need (we run none).
The first alternative of an ``a | b`` dependency is taken, as apt does on a fresh
system, unless another is already in. ``apt-get install --no-install-recommends``
(the ``Dockerfile``) chooses the same.

How: ``apt-get download`` (the package registry, through its ordinary client) into a
cache, each file checked against the SHA-256 apt's signed indexes give; a ``.deb``
is an ar archive whose ``data.tar`` holds the files. They are unpacked into the
merged-/usr layout Debian uses since bookworm (``/lib`` is ``usr/lib``), without the
documentation, manuals and translations (as ``debian:*-slim`` images drop them; each
package's copyright file is kept). Each package's control file goes to
``/var/lib/dpkg/status.d/<package>``, as distroless images do, so that scanners
(Trivy among them) can list what the image holds.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Only maintainer scripts, which are never run here, need these: dpkg (python3-minimal)
# and an awk (base-files, a virtual package written in angle brackets).
NOT_INSTALLED = frozenset({"dpkg", "<awk>"})
MERGED = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
DROPPED = ("usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/",
           "usr/share/lintian/", "usr/share/linda/")
APT_CACHE_DEPENDS = ("apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
                     "--no-breaks", "--no-replaces", "--no-enhances")


class DebianError(RuntimeError):
    pass


def _run(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=600)
    if result.returncode != 0:
        raise DebianError(f"{' '.join(argv[:3])} ... failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


# --- which packages ------------------------------------------------------------------

Alternatives = list[list[str]]  # one dependency: its alternatives, each a list of names


def parse_depends(text: str) -> dict[str, list[Alternatives]]:
    """``apt-cache depends`` output: for each package, its dependencies; each is a list
    of alternatives, and each alternative the names that satisfy it: a package, or a
    virtual package (``<awk>``) followed by the packages that provide it."""
    found: dict[str, list[Alternatives]] = {}
    current: list[Alternatives] = []
    group: Alternatives = []
    for line in text.splitlines():
        if not line.startswith(" "):
            current = found.setdefault(line.strip(), [])
            group = []
            continue
        dependency = re.match(r"^ ([| ])(?:PreDepends|Depends): (\S+)$", line)
        if dependency:
            name = dependency.group(2)
            group.append([name.split(":")[0]])
            if dependency.group(1) == " ":  # the last alternative of this dependency
                current.append(group)
                group = []
            continue
        provider = re.match(r"^    (\S+)$", line)
        if provider:  # a provider of the virtual package just named
            alternatives = group or (current[-1] if current else None)
            if alternatives is not None:
                alternatives[-1].append(provider.group(1).split(":")[0])
    return found


def closure(roots: Iterable[str], depends: dict[str, list[Alternatives]],
            absent: frozenset[str] = NOT_INSTALLED) -> list[str]:
    """Every package ``roots`` need, given each package's dependencies."""
    chosen = set(roots)
    pending = sorted(chosen)
    while pending:
        package = pending.pop(0)
        for alternatives in depends.get(package, []):
            names = [name for alternative in alternatives for name in alternative]
            if any(name in chosen or name in absent for name in names):
                continue
            real = [name for name in names if not name.startswith("<")]
            if not real:
                raise DebianError(f"{package}: nothing provides {' | '.join(names)}")
            chosen.add(real[0])
            pending.append(real[0])
    return sorted(chosen)


def resolve(roots: Iterable[str]) -> list[str]:
    """The packages to install for ``roots``, as this machine's apt sees them."""
    roots = sorted(roots)
    depends = parse_depends(_run(*APT_CACHE_DEPENDS, "--recurse", *roots))
    missing = [name for name in roots if name not in depends]
    if missing:
        raise DebianError(f"apt knows no package {', '.join(missing)}")
    return closure(roots, depends)


# --- fetching ------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    """One ``.deb`` as apt's indexes describe it."""

    name: str
    version: str
    filename: str
    size: int
    sha256: str


def pin(names: Iterable[str]) -> list[Package]:
    """The version apt would install of each package, with its file's SHA-256."""
    names = sorted(names)
    packages = []
    lines = _run("apt-get", "download", "--print-uris", *names).splitlines()
    for line in lines:
        match = re.match(r"^'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$", line)
        if not match:
            continue
        filename = match.group(2)
        name, version, _arch = filename.removesuffix(".deb").split("_")
        packages.append(Package(name, version.replace("%3a", ":"), filename,
                                int(match.group(3)), match.group(4)))
    if sorted(p.name for p in packages) != names:
        raise DebianError(f"apt-get download --print-uris named {[p.name for p in packages]},"
                          f" not {names}")
    return packages


def fetch(packages: Iterable[Package], cache: Path) -> dict[str, Path]:
    """Each package's file in ``cache``, downloaded once and checked every time."""
    cache.mkdir(parents=True, exist_ok=True)
    packages = list(packages)
    missing = [p for p in packages if not _verified(cache / p.filename, p.sha256)]
    if missing:
        with tempfile.TemporaryDirectory(prefix="firebreak-debs-", dir=cache) as scratch:
            # name=version: exactly what was pinned, whatever apt learns meanwhile.
            _run("apt-get", "download", *(f"{p.name}={p.version}" for p in missing),
                 cwd=Path(scratch))
            for package in missing:
                got = Path(scratch) / package.filename
                if not _verified(got, package.sha256):
                    raise DebianError(f"{package.filename}: not the file apt's index describes")
                got.replace(cache / package.filename)
    return {p.name: cache / p.filename for p in packages}


def _verified(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256


# --- unpacking -----------------------------------------------------------------------


def ar_members(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The members of an ar archive (the container of a ``.deb``)."""
    if data[:8] != b"!<arch>\n":
        raise DebianError("not an ar archive")
    position = 8
    while position + 60 <= len(data):
        header = data[position:position + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        yield name, data[position + 60:position + 60 + size]
        position += 60 + size + size % 2


def _tar(name: str, data: bytes) -> tarfile.TarFile:
    if name.endswith(".xz"):
        data = lzma.decompress(data)
    elif name.endswith(".zst"):
        raise DebianError(f"{name}: zstd-compressed packages are not supported")
    return tarfile.open(fileobj=io.BytesIO(data))  # .gz and plain tars by autodetection


def image_path(path: str) -> str | None:
    """Where a file of a package goes in the image, or None when it is left out."""
    path = path.removeprefix("./").strip("/")
    top, _, rest = path.partition("/")
    if top in MERGED:
        path = f"usr/{top}/{rest}" if rest else f"usr/{top}"
    if path.startswith(DROPPED) and not path.endswith("/copyright"):
        return None
    return path


def control(deb: Path) -> str:
    """A package's control file (its name, version, source, dependencies ...)."""
    for name, data in ar_members(deb.read_bytes()):
        if name.startswith("control.tar"):
            with _tar(name, data) as tar:
                member = tar.extractfile("./control")
                if member is not None:
                    return member.read().decode()
    raise DebianError(f"{deb.name} has no control file")


def unpack(deb: Path, root: Path) -> None:
    """Unpack a package's files into ``root`` (a merged-/usr tree), as root would own
    them: modes kept, set-id bits dropped."""
    for name, data in ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        with _tar(name, data) as tar:
            for member in tar:
                inside = image_path(member.name)
                if not inside:
                    continue
                target = root / inside
                if member.isdir():
                    if target.is_symlink():
                        continue  # lib -> usr/lib and the like
                    target.mkdir(parents=True, exist_ok=True)
                    target.chmod(member.mode & 0o1777)
                    continue
                if target.is_symlink() or target.exists():
                    target.unlink()
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    target.symlink_to(member.linkname)
                elif member.islnk():
                    linked = image_path(member.linkname)
                    if linked:
                        target.hardlink_to(root / linked)
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with target.open("wb") as out:
                        shutil.copyfileobj(source, out)
                    target.chmod(member.mode & 0o777)


def merged_usr(root: Path) -> None:
    """The symlinks of a merged-/usr system: /bin -> usr/bin, /lib -> usr/lib ..."""
    for top in MERGED:
        if top in ("lib32", "libx32"):
            continue
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        link = root / top
        if not link.is_symlink():
            link.symlink_to(f"usr/{top}")
