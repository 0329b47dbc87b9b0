"""Container images written by hand: layers as tars, and an archive that every
runtime loads.

The archive holds the image twice over, as ``docker save`` has since Docker 25: an
OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) and a
``manifest.json`` naming the same blobs for older Docker-style loaders. So one file
goes to ``ctr images import`` (containerd reads the layout; the annotation
``io.containerd.image.name`` names the image), ``docker load``, ``podman load`` and
``kind load image-archive``.

Everything written is reproducible: files have fixed times and owners, layers are
gzipped without a timestamp, JSON is sorted. The same inputs give the same digests,
so the digest of the image says what is in it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

EPOCH = 0  # every file's mtime: the same inputs always make the same layer
CHUNK = 1 << 20

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass
class Layer:
    """The files of one layer, added in order; parent folders are added for you.

    The tar is written to a temporary file, so a layer may be larger than memory
    would comfortably hold."""

    _file: IO[bytes] = field(init=False)
    _tar: tarfile.TarFile = field(init=False)
    _folders: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        # Both are closed by blob(), which hands the finished layer over.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    @staticmethod
    def _info(path: str, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
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

    def hardlink(self, path: str, target: str) -> None:
        self._parent(path)
        info = self._info(path, 0o644, tarfile.LNKTYPE)
        info.linkname = target.strip("/")
        self._tar.addfile(info)

    def tree(self, source: Path, destination: str) -> None:
        """Copy a folder of this machine into the layer (files, folders, symlinks)."""
        self.folder(destination)
        for path in sorted(source.rglob("*")):
            inside = f"{destination.rstrip('/')}/{path.relative_to(source)}"
            if path.is_symlink():
                self.symlink(inside, str(path.readlink()))
            elif path.is_dir():
                self.folder(inside, path.stat().st_mode & 0o7777)
            else:
                self._parent(inside)
                info = self._info(inside, path.stat().st_mode & 0o777)
                info.size = path.stat().st_size
                with path.open("rb") as data:
                    self._tar.addfile(info, data)

    def blob(self, out: Path) -> Blob:
        """Finish the layer and write it, gzipped, to ``out``."""
        self._tar.close()
        self._file.seek(0)
        diff_id = hashlib.sha256()
        out.parent.mkdir(parents=True, exist_ok=True)
        # No name and no time in the gzip header: the same tar, the same bytes.
        with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                  compresslevel=6) as packed:
            while chunk := self._file.read(CHUNK):
                diff_id.update(chunk)
                packed.write(chunk)
        self._file.close()
        return Blob(out, f"sha256:{_file_digest(out)}", f"sha256:{diff_id.hexdigest()}",
                    out.stat().st_size)


@dataclass(frozen=True)
class Blob:
    """A finished layer: its gzipped tar, the digest of that file (how manifests name
    it) and the digest of the plain tar (how the image's config names it)."""

    path: Path
    digest: str
    diff_id: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "digest": self.digest, "diff_id": self.diff_id,
                "size": self.size}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Blob:
        return cls(Path(data["path"]), data["digest"], data["diff_id"], int(data["size"]))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def full_name(name: str) -> str:
    """The name containerd gives ``name`` (``firebreak:0.1.0`` is
    ``docker.io/library/firebreak:0.1.0``; ``localhost/x:y`` stays as it is)."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def _json(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_image(out: Path, name: str, layers: Iterable[Layer | Blob], *,
                entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                env: Mapping[str, str] | None = None, user: str | None = None,
                workdir: str = "/", labels: Mapping[str, str] | None = None) -> str:
    """Write an image archive of ``layers`` (first is lowest) to ``out``; return the
    digest of its config, which is the image ID runtimes report."""
    with tempfile.TemporaryDirectory(prefix="firebreak-image-") as scratch:
        blobs = [layer if isinstance(layer, Blob) else layer.blob(Path(scratch) / f"{i}.tar.gz")
                 for i, layer in enumerate(layers)]
        config = _json({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": {
                "Env": [f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", **(env or {})}.items()],
                "WorkingDir": workdir,
                **({"Entrypoint": entrypoint} if entrypoint else {}),
                **({"Cmd": cmd} if cmd else {}),
                **({"User": user} if user else {}),
                **({"Labels": dict(labels)} if labels else {}),
            },
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
        })
        config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
        manifest = _json({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": b.digest, "size": b.size} for b in blobs],
        })
        manifest_digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else "latest"
        index = _json({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [{"mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest),
                           "annotations": {NAME_ANNOTATION: full_name(name), REF_ANNOTATION: tag}}],
        })

        def path(digest: str) -> str:
            return "blobs/sha256/" + digest.removeprefix("sha256:")

        docker = _json([{"Config": path(config_digest), "RepoTags": [name],
                         "Layers": [path(b.digest) for b in blobs]}])
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
            for folder in ("blobs", "blobs/sha256"):
                info = Layer._info(folder, 0o755, tarfile.DIRTYPE)
                archive.addfile(info)
            for member, data in (("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
                                 (path(config_digest), config), (path(manifest_digest), manifest)):
                _add(archive, member, data)
            written = set()
            for blob in blobs:
                if blob.digest not in written:  # two identical layers are stored once
                    written.add(blob.digest)
                    info = Layer._info(path(blob.digest), 0o644)
                    info.size = blob.size
                    with blob.path.open("rb") as content:
                        archive.addfile(info, content)
            _add(archive, "index.json", index)
            _add(archive, "manifest.json", docker)
        partial.replace(out)
    return config_digest


def _add(archive: tarfile.TarFile, member: str, data: bytes) -> None:
    info = Layer._info(member, 0o644)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def copy_blob(blob: Blob, folder: Path) -> Blob:
    """Keep a finished layer in ``folder`` (a cache), named by its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (blob.digest.removeprefix("sha256:") + ".tar.gz")
    if not target.exists():
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(blob.path, partial)
        partial.replace(target)
    return Blob(target, blob.digest, blob.diff_id, blob.size)
