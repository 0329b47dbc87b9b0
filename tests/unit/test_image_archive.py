"""Image archives (``image/archive.py``): an OCI layout and a docker manifest of the
same blobs, reproducible to the byte."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from image import archive

# --- the archive --------------------------------------------------------------------------


def _layer() -> archive.Layer:
    layer = archive.Layer()
    layer.file("etc/hello", b"hello\n")
    layer.symlink("bin/hi", "/etc/hello")
    layer.folder("tmp", mode=0o1777)
    return layer


def test_an_archive_holds_an_oci_layout_and_a_docker_manifest_of_the_same_blobs(
        tmp_path: Path) -> None:
    image_id = archive.write_image(tmp_path / "a.tar", "firebreak:0.1.0", [_layer()],
                                   entrypoint=["/bin/hi"], user="10001:10001",
                                   labels={"a": "b"})
    with tarfile.open(tmp_path / "a.tar") as tar:
        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None
            return member.read()

        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        (entry,) = json.loads(read("index.json"))["manifests"]
        assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/firebreak:0.1.0",
                                        "org.opencontainers.image.ref.name": "0.1.0"}
        manifest_bytes = read("blobs/sha256/" + entry["digest"].removeprefix("sha256:"))
        assert hashlib.sha256(manifest_bytes).hexdigest() == entry["digest"].removeprefix("sha256:")
        manifest = json.loads(manifest_bytes)
        config = read("blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:"))
        assert f"sha256:{hashlib.sha256(config).hexdigest()}" == image_id
        (layer,) = manifest["layers"]
        blob = read("blobs/sha256/" + layer["digest"].removeprefix("sha256:"))
        assert layer["size"] == len(blob)
        plain = gzip.decompress(blob)
        assert json.loads(config)["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(plain).hexdigest()}"]
        assert json.loads(config)["config"]["User"] == "10001:10001"

        (docker,) = json.loads(read("manifest.json"))
        assert docker == {"Config": "blobs/sha256/" + image_id.removeprefix("sha256:"),
                          "RepoTags": ["firebreak:0.1.0"],
                          "Layers": ["blobs/sha256/" + layer["digest"].removeprefix("sha256:")]}
    with tarfile.open(fileobj=io.BytesIO(plain)) as files:
        assert {m.name: (m.mode, m.uid, m.mtime) for m in files} == {
            "etc": (0o755, 0, 0), "etc/hello": (0o644, 0, 0), "bin": (0o755, 0, 0),
            "bin/hi": (0o777, 0, 0), "tmp": (0o1777, 0, 0)}


def test_the_same_layers_make_the_same_image(tmp_path: Path) -> None:
    first = archive.write_image(tmp_path / "1.tar", "x:1", [_layer()])
    second = archive.write_image(tmp_path / "2.tar", "x:1", [_layer()])
    assert first == second
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()


@pytest.mark.parametrize(("name", "full"), [
    ("firebreak:0.1.0", "docker.io/library/firebreak:0.1.0"),
    ("acme/firebreak:1", "docker.io/acme/firebreak:1"),
    ("localhost/firebreak:0.1.0", "localhost/firebreak:0.1.0"),
    ("registry.example:5000/f:1", "registry.example:5000/f:1"),
])
def test_names_are_given_in_full_as_containerd_does(name: str, full: str) -> None:
    assert archive.full_name(name) == full
