"""The operator's image, from Debian packages and the locked wheels: no container
engine, no registry, no base image to trust.

Three layers, each cached under its own key, so a change to the operator's code
rebuilds only the last:

1. **system**: the Debian packages of ``image/debian-packages`` and what they depend
   on (``debian.py``): Debian's ``python3`` and the libraries it links, and
   ``base-files`` (``/etc/os-release``); the standard library byte-compiled; users
   ``root``, ``nobody`` and ``firebreak`` (``UID``);
2. **python**: the runtime-only set of ``requirements-runtime.lock`` (hashes required,
   wheels only, for Debian's Python and glibc), in a virtual environment at
   ``PREFIX`` over Debian's interpreter;
3. **operator**: the ``firebreak`` wheel built from this checkout, and its
   ``firebreak`` command.

Python files are byte-compiled by the image's own interpreter (run here through its
own dynamic loader), into hash-checked ``.pyc`` files: the root file system is
read-only in the pod, so nothing could be compiled there. The image's interpreter
then imports every library the operator uses, before anything is written.

The ``Dockerfile`` builds the same image for those with a container engine: the same
package list, lock file, prefix, user, entry point and environment; a unit test
(``tests/unit/test_image_recipe.py``) keeps the two in step.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import debian
from .archive import Blob, Layer, copy_blob, write_image

REPO = Path(__file__).resolve().parent.parent
PACKAGE_LIST = REPO / "image" / "debian-packages"
RUNTIME_LOCK = REPO / "requirements-runtime.lock"
SOURCE = REPO / "operator" / "firebreak"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

NAME = PROJECT["name"]
VERSION = PROJECT["version"]
TAG = f"{NAME}:{VERSION}"  # what manifests/deployment.yaml runs
SUITE = "bookworm"  # the Debian release of the Dockerfile's base image
ARCHITECTURE = "amd64"
PREFIX = "/opt/firebreak"
UID = 10001
USER = "firebreak"
ENTRYPOINT = [f"{PREFIX}/bin/firebreak"]
ENV = {
    "PATH": f"{PREFIX}/bin:/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # Log lines reach `kubectl logs` as they are written.
    "PYTHONUNBUFFERED": "1",
    # The root file system is read-only: everything is compiled at build time.
    "PYTHONDONTWRITEBYTECODE": "1",
}
LABELS = {
    "org.opencontainers.image.title": NAME,
    "org.opencontainers.image.version": VERSION,
    "org.opencontainers.image.description": PROJECT["description"],
    "org.opencontainers.image.licenses": PROJECT["license"],
}
KEEP_DAYS = 7  # the cache keeps what was used this recently
# The code that makes the layers is part of every layer's key: a change to it rebuilds.
RECIPE = hashlib.sha256(b"".join(
    (REPO / "image" / name).read_bytes() for name in ("archive.py", "build.py", "debian.py"))
).hexdigest()


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    """A built image archive and what went into it."""

    path: Path
    id: str  # the digest of its config: what containerd and Docker call the image ID
    tag: str
    layers: tuple[Blob, ...]
    packages: tuple[debian.Package, ...]
    built: tuple[str, ...]  # the layers built by this call (the others came from the cache)


def cache_root() -> Path:
    configured = os.environ.get("FIREBREAK_IMAGE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "firebreak" / "image"


def roots() -> list[str]:
    """The Debian packages named in ``image/debian-packages``."""
    lines = (line.split("#", 1)[0].strip() for line in PACKAGE_LIST.read_text().splitlines())
    return [line for line in lines if line]


def _check_host() -> None:
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise ImageError("`make image` reads Debian's packages with apt; without apt-get, build "
                         "the Dockerfile with a container engine instead")
    release = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            release[key] = value.strip('"')
    if (release.get("ID"), release.get("VERSION_CODENAME")) != ("debian", SUITE):
        raise ImageError(f"`make image` installs Debian {SUITE}'s packages with this machine's "
                         f"apt; this is {release.get('PRETTY_NAME', 'not Debian')}. Build the "
                         "Dockerfile with a container engine instead")
    architecture = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                                  text=True).stdout.strip()
    if architecture != ARCHITECTURE:
        raise ImageError(f"the image is built for {ARCHITECTURE}; this machine is {architecture}")


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:24]


def _source_files() -> list[Path]:
    return sorted(p for p in SOURCE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def _python_version(packages: list[debian.Package]) -> str:
    for package in packages:
        match = re.fullmatch(r"python(3\.\d+)", package.name)
        if match:
            return match.group(1)
    raise ImageError("no python3.X package among the image's packages")


def _glibc(packages: list[debian.Package]) -> str:
    libc = next((p for p in packages if p.name == "libc6"), None)
    if libc is None:
        raise ImageError("libc6 is not among the image's packages")
    return ".".join(libc.version.split("-")[0].split(".")[:2])


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_image(log: Callable[[str], None] | None = None) -> Image:
    """The image of this checkout: from the cache, or built (only the layers whose
    inputs changed) and cached."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    _check_host()
    packages = debian.pin(debian.resolve(roots()))
    python = _python_version(packages)
    platform = f"x86_64-manylinux_{_glibc(packages).replace('.', '_')}"
    system_key = _digest(RECIPE, "system", str(UID), USER,
                         *(f"{p.filename} {p.sha256}" for p in packages))
    python_key = _digest(RECIPE, "python", system_key, PREFIX, platform, RUNTIME_LOCK.read_bytes())
    operator_key = _digest(RECIPE, "operator", python_key, (REPO / "pyproject.toml").read_bytes(),
                           (REPO / "README.md").read_bytes(),
                           *(f"{p.relative_to(SOURCE)}\0{_digest(p.read_bytes())}"
                             for p in _source_files()))
    keys = {"system": system_key, "python": python_key, "operator": operator_key}
    cache = cache_root()
    with _locked(cache):
        blobs = {layer: _cached(cache, key) for layer, key in keys.items()}
        missing = [layer for layer, blob in blobs.items() if blob is None]
        if missing:
            began = time.monotonic()
            say(f"Building the operator image's {', '.join(missing)} layer"
                f"{'s' if len(missing) > 1 else ''} (cached in {cache})")
            (cache / "layers").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="firebreak-image-") as scratch:
                built = _build(Path(scratch), cache, packages, python, platform, missing, say)
                for layer, blob in built.items():
                    kept = blobs[layer] = copy_blob(blob, cache / "blobs")
                    (cache / "layers" / f"{keys[layer]}.json").write_text(json.dumps(kept.to_json()))
            say(f"  layers built in {time.monotonic() - began:.0f}s")
        layers = tuple(blob for blob in blobs.values() if blob is not None)
        archive_key = _digest(RECIPE, TAG, *(b.digest for b in layers))
        archive = cache / "archives" / archive_key / f"{NAME}-{VERSION}.tar"
        id_file = archive.with_suffix(".id")
        if not (archive.is_file() and id_file.is_file()):
            image_id = write_image(archive, TAG, layers, entrypoint=ENTRYPOINT, env=ENV,
                                   user=f"{UID}:{UID}", labels=LABELS)
            id_file.write_text(image_id)
        _prune(cache, [*(cache / "layers" / f"{key}.json" for key in keys.values()),
                       *(b.path for b in layers), archive.parent,
                       *(cache / "debs" / p.filename for p in packages)])
        return Image(archive, id_file.read_text(), TAG, layers, tuple(packages), tuple(missing))


def _cached(cache: Path, key: str) -> Blob | None:
    entry = cache / "layers" / f"{key}.json"
    if not entry.is_file():
        return None
    blob = Blob.from_json(json.loads(entry.read_text()))
    return blob if blob.path.is_file() and blob.path.stat().st_size == blob.size else None


def _prune(cache: Path, used: list[Path]) -> None:
    """Touch what this build used; remove what no build has used for ``KEEP_DAYS``.
    (Checkouts of other branches share the cache: what they use stays while they
    use it.)"""
    now = time.time()
    for path in used:
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))
    for folder in ("layers", "blobs", "archives", "debs"):
        for path in (cache / folder).glob("*"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > KEEP_DAYS * 86400:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink()


# --- building ------------------------------------------------------------------------


def _build(scratch: Path, cache: Path, packages: list[debian.Package], python: str,
           platform: str, wanted: list[str], say: Callable[[str], None]) -> dict[str, Blob]:
    """Build the ``wanted`` layers. The system's files are unpacked whatever is wanted:
    the image's interpreter compiles the other layers."""
    root = scratch / "system"
    say(f"  {len(packages)} Debian packages ({', '.join(roots())} and their dependencies)")
    files = debian.fetch(packages, cache / "debs")
    debian.merged_usr(root)
    for package in packages:
        debian.unpack(files[package.name], root)
    interpreter = _interpreter(root, python)
    built: dict[str, Blob] = {}
    if "system" in wanted:
        _compile(interpreter, root, root / "usr" / "lib" / f"python{python}")
        built["system"] = _system_layer(root, packages, files).blob(scratch / "system.tar.gz")
    site = f"{PREFIX.strip('/')}/lib/python{python}/site-packages"
    if "python" in wanted:
        deps = scratch / "python"
        say(f"  the runtime-only Python set of {RUNTIME_LOCK.name} for Python {python} ({platform})")
        _uv("pip", "install", "--target", str(deps / site), "--no-deps", "--require-hashes",
            "--only-binary", ":all:", "--python-version", python, "--python-platform", platform,
            "--no-compile", "--quiet", "-r", str(RUNTIME_LOCK))
        _drop_install_leftovers(deps / site)
        _compile(interpreter, deps, deps / site)
        _imports_work(interpreter, deps / site)
        built["python"] = _python_layer(deps, python).blob(scratch / "python.tar.gz")
    if "operator" in wanted:
        app = scratch / "operator"
        say(f"  the {NAME} wheel of this checkout")
        # A pure-Python wheel is installed by unpacking it; an installer would add where
        # it came from (this build's temporary path) and when.
        with zipfile.ZipFile(_wheel(scratch)) as wheel:
            wheel.extractall(app / site)
        _compile(interpreter, app, app / site)
        built["operator"] = _operator_layer(app).blob(scratch / "operator.tar.gz")
    return built


def _drop_install_leftovers(site: Path) -> None:
    # Scripts written for this machine's Python, and the installer's lock file.
    shutil.rmtree(site / "bin", ignore_errors=True)
    (site / ".lock").unlink(missing_ok=True)


def _interpreter(root: Path, python: str) -> list[str]:
    """The image's own Python, run on this machine by the image's own dynamic loader
    and libraries (``-I``: nothing of this machine's Python setup leaks in; ``-B``: the
    modules it imports write no bytecode, which would hold this build's file times)."""
    libraries = root / "usr" / "lib" / "x86_64-linux-gnu"
    return [str(libraries / "ld-linux-x86-64.so.2"), "--inhibit-cache", "--library-path",
            str(libraries), str(root / "usr" / "bin" / f"python{python}"), "-I", "-B"]


def _compile(interpreter: list[str], strip: Path, folder: Path) -> None:
    # unchecked-hash: a .pyc that is never compared with its source's time (every file
    # in the image has the same fixed time) and never rewritten.
    result = subprocess.run(
        [*interpreter, "-m", "compileall", "-q", "-f", "-j", "0", "--invalidation-mode",
         "unchecked-hash", "-s", str(strip), "-p", "/", str(folder)],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"byte-compiling {folder.relative_to(strip)} failed:\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")


def _imported_libraries() -> list[str]:
    """Top-level modules the operator's code imports from outside the standard library."""
    found: set[str] = set()
    for path in _source_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return sorted(found - set(sys.stdlib_module_names) - {NAME, "__future__"})


def _imports_work(interpreter: list[str], site: Path) -> None:
    modules = _imported_libraries()
    code = f"import sys; sys.path.insert(0, {str(site)!r}); " + "; ".join(
        f"import {module}" for module in modules)
    result = subprocess.run([*interpreter, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"the image's Python cannot import {', '.join(modules)}:\n"
                         f"{result.stderr[-3000:]}")


def _uv(*args: str) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        raise ImageError("uv is needed to install the locked wheels (`make install` installs it)")
    result = subprocess.run([uv, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageError(f"uv {' '.join(args[:2])} failed:\n{result.stderr[-3000:]}")


def _wheel(scratch: Path) -> Path:
    """The operator's wheel, built from a copy of exactly the files its key covers."""
    source = scratch / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    for path in _source_files():
        target = source / "operator" / NAME / path.relative_to(SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    _uv("build", "--wheel", "--quiet", "--out-dir", str(scratch / "wheel"), str(source))
    (wheel,) = (scratch / "wheel").glob("*.whl")
    return wheel


def _system_layer(root: Path, packages: list[debian.Package], files: dict[str, Path]) -> Layer:
    layer = Layer()
    layer.tree(root, "/")
    for folder in ("proc", "sys", "dev", "run", "var/lib/dpkg/status.d", "root", "home"):
        layer.folder(folder)
    layer.folder("tmp", mode=0o1777)
    layer.file("etc/passwd", (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{USER}:x:{UID}:{UID}:{NAME}:/nonexistent:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode())
    layer.file("etc/group", f"root:x:0:\n{USER}:x:{UID}:\nnogroup:x:65534:\n".encode())
    layer.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    # What is installed, for scanners (the distroless layout: one control file each).
    for package in packages:
        layer.file(f"var/lib/dpkg/status.d/{package.name}",
                   debian.control(files[package.name]).encode())
    return layer


def _python_layer(deps: Path, python: str) -> Layer:
    """A virtual environment over Debian's interpreter, holding the locked packages."""
    layer = Layer()
    prefix = PREFIX.strip("/")
    layer.file(f"{prefix}/pyvenv.cfg", (
        "home = /usr/bin\ninclude-system-site-packages = false\n"
        f"version = {python}\n").encode())
    layer.symlink(f"{prefix}/bin/python3", f"/usr/bin/python{python}")
    layer.symlink(f"{prefix}/bin/python", "python3")
    layer.symlink(f"{prefix}/bin/python{python}", "python3")
    layer.tree(deps / prefix / "lib", f"{prefix}/lib")
    return layer


def _operator_layer(app: Path) -> Layer:
    layer = Layer()
    prefix = PREFIX.strip("/")
    layer.tree(app / prefix / "lib", f"{prefix}/lib")
    for command, target in PROJECT["scripts"].items():
        module, _, function = target.partition(":")
        layer.file(f"{prefix}/bin/{command}", (
            f"#!{PREFIX}/bin/python3\nimport sys\nfrom {module} import {function}\n\n"
            f"if __name__ == '__main__':\n    sys.exit({function}())\n").encode(), mode=0o755)
    return layer
