"""Container images written by hand, for a node that never pulls.

The real test node has no registry to pull from (and must not reach one): every
image it runs is a tar written here from local files and imported into its
containerd. The format is the docker-archive that ``ctr images import`` reads: a
``manifest.json`` naming a config and its layers. Layers are plain tars, written
with fixed timestamps and owners, so the same inputs give the same image digest.

Names start with ``localhost/``: even an accidental pull could only ask 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PAUSE_IMAGE = "localhost/firebreak/pause:local"
TOOLS_IMAGE = "localhost/firebreak/busybox:local"
EPOCH = 0  # every file's mtime: the same inputs always make the same layer


@dataclass
class Layer:
    """The files of one layer, added in order; parent folders are added for you."""

    _tar: tarfile.TarFile = field(init=False)
    _buffer: io.BytesIO = field(default_factory=io.BytesIO, init=False)
    _folders: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        # Closed by bytes(), which hands the finished layer over.
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _info(self, path: str, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode, info.mtime = kind, mode, EPOCH
        info.uid = info.gid = 0
        return info

    def folder(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name and name not in self._folders:
                self._folders.add(name)
                self._tar.addfile(self._info(name, mode if depth == len(parts) else 0o755,
                                             tarfile.DIRTYPE))

    def _parent(self, path: str) -> None:
        parent = path.strip("/").rpartition("/")[0]
        if parent:
            self.folder(parent)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parent(path)
        info = self._info(path, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        self._parent(path)
        info = self._info(path, 0o777, tarfile.SYMTYPE)
        info.linkname = target
        self._tar.addfile(info)

    def tree(self, source: Path, destination: str) -> None:
        """Copy a folder of this machine into the layer (files, folders, symlinks)."""
        self.folder(destination)
        for path in sorted(source.rglob("*")):
            inside = f"{destination.rstrip('/')}/{path.relative_to(source)}"
            if path.is_symlink():
                self.symlink(inside, str(path.readlink()))
            elif path.is_dir():
                self.folder(inside)
            else:
                self.file(inside, path.read_bytes(), path.stat().st_mode & 0o777)

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def base_layer() -> Layer:
    """The folders every container expects, and users root and nobody."""
    layer = Layer()
    for folder in ("etc", "proc", "sys", "dev", "var/www"):
        layer.folder(folder)
    layer.folder("tmp", mode=0o1777)
    layer.file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
    return layer


def write_image(out: Path, name: str, layers: Iterable[Layer], *,
                entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                env: dict[str, str] | None = None, user: str | None = None,
                workdir: str = "/") -> str:
    """Write a docker-archive tar of ``layers`` (first is lowest); return its config
    digest, which is the image ID containerd reports."""
    blobs = [layer.bytes() for layer in layers]
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", **(env or {})}.items()],
            "WorkingDir": workdir,
            **({"Entrypoint": entrypoint} if entrypoint else {}),
            **({"Cmd": cmd} if cmd else {}),
            **({"User": user} if user else {}),
        },
        "rootfs": {"type": "layers",
                   "diff_ids": [f"sha256:{hashlib.sha256(b).hexdigest()}" for b in blobs]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    layer_names = [f"{hashlib.sha256(b).hexdigest()}/layer.tar" for b in blobs]
    manifest = [{"Config": f"{config_digest}.json", "RepoTags": [name], "Layers": layer_names}]
    members = [(f"{config_digest}.json", config_bytes), *zip(layer_names, blobs, strict=True),
               ("manifest.json", json.dumps(manifest).encode())]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as archive:
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            archive.addfile(info, io.BytesIO(data))
    return f"sha256:{config_digest}"


def write_pause_image(out: Path, pause: Path) -> str:
    """The sandbox image: upstream's ``pause`` built from the pinned Kubernetes module."""
    layer = base_layer()
    layer.file("pause", pause.read_bytes(), 0o755)
    return write_image(out, PAUSE_IMAGE, [layer], entrypoint=["/pause"])


def write_tools_image(out: Path, busybox: Path) -> str:
    """A small image for test pods: Debian's static busybox (sh, httpd, wget, nc ...)."""
    layer = base_layer()
    layer.file("bin/busybox", busybox.read_bytes(), 0o755)
    applets = subprocess.run([str(busybox), "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        layer.symlink(f"bin/{applet}", "busybox")
    return write_image(out, TOOLS_IMAGE, [layer], cmd=["/bin/sh"])
