"""Debian packages without dpkg (``image/debian.py``): which packages, and how they
are unpacked."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from image import debian

# --- Debian packages --------------------------------------------------------------------

DEPENDS = """\
python3
  PreDepends: python3-minimal
  Depends: python3.11
  Depends: libpython3-stdlib
  Suggests: python3-doc
python3-minimal
  PreDepends: python3.11-minimal
  Depends: dpkg
python3.11
  Depends: python3.11-minimal
 |Depends: media-types
  Depends: mime-support
python3.11-minimal
  PreDepends: libc6
libpython3-stdlib
  Depends: <libpython3-stdlib-provider>
    libpython3.11-stdlib
base-files
  PreDepends: <awk>
    gawk
    mawk
dpkg
  Depends: tar
libc6
  Depends: libgcc-s1
libgcc-s1
mime-support
  Depends: mailcap
"""


def test_apt_cache_depends_output_is_read_with_alternatives_and_providers() -> None:
    parsed = debian.parse_depends(DEPENDS)
    assert parsed["python3"] == [[["python3-minimal"]], [["python3.11"]], [["libpython3-stdlib"]]]
    assert parsed["python3.11"][1] == [["media-types"], ["mime-support"]]
    assert parsed["libpython3-stdlib"] == [[["<libpython3-stdlib-provider>",
                                             "libpython3.11-stdlib"]]]
    assert parsed["base-files"] == [[["<awk>", "gawk", "mawk"]]]


def test_the_closure_takes_first_alternatives_providers_and_leaves_maintainer_tools_out() -> None:
    packages = debian.closure(["python3", "base-files"], debian.parse_depends(DEPENDS))
    assert packages == ["base-files", "libc6", "libgcc-s1", "libpython3-stdlib",
                        "libpython3.11-stdlib", "media-types", "python3", "python3-minimal",
                        "python3.11", "python3.11-minimal"]


def test_an_alternative_already_chosen_satisfies_a_dependency() -> None:
    parsed = debian.parse_depends(DEPENDS)
    assert "media-types" not in debian.closure(["mime-support", "python3.11"], parsed)


def _deb(files: dict[str, bytes], links: dict[str, str]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o4755 if path.endswith("suid") else 0o644
            tar.addfile(info, io.BytesIO(content))
        for path, target in links.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:gz") as tar:
        body = b"Package: demo\nVersion: 1\n"
        info = tarfile.TarInfo("./control")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    out = b"!<arch>\n"
    for name, blob in (("debian-binary", b"2.0\n"), ("control.tar.gz", control.getvalue()),
                       ("data.tar.gz", data.getvalue())):
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(blob):<10}`\n".encode()
        out += blob + (b"\n" if len(blob) % 2 else b"")
    return out


def test_a_deb_unpacks_into_merged_usr_without_docs_or_set_id_bits(tmp_path: Path) -> None:
    deb = tmp_path / "demo.deb"
    deb.write_bytes(_deb({"./lib/x86_64-linux-gnu/libdemo.so.1": b"elf",
                          "./usr/bin/suid": b"#!", "./usr/share/doc/demo/README": b"docs",
                          "./usr/share/doc/demo/copyright": b"(c)",
                          "./usr/share/man/man1/demo.1.gz": b"man"},
                         {"./lib64/ld.so": "/lib/x86_64-linux-gnu/ld.so"}))
    root = tmp_path / "root"
    debian.merged_usr(root)
    debian.unpack(deb, root)

    assert (root / "usr/lib/x86_64-linux-gnu/libdemo.so.1").read_bytes() == b"elf"
    assert (root / "lib").readlink() == Path("usr/lib")
    assert (root / "usr/lib64/ld.so").readlink() == Path("/lib/x86_64-linux-gnu/ld.so")
    assert (root / "usr/bin/suid").stat().st_mode & 0o7777 == 0o755
    assert (root / "usr/share/doc/demo/copyright").read_bytes() == b"(c)"
    assert not (root / "usr/share/doc/demo/README").exists()
    assert not (root / "usr/share/man").exists()
    assert debian.control(deb) == "Package: demo\nVersion: 1\n"


@pytest.mark.parametrize(("path", "where"), [
    ("./bin/sh", "usr/bin/sh"), ("./lib", "usr/lib"), ("./usr/lib/x", "usr/lib/x"),
    ("./etc/os-release", "etc/os-release"), ("./usr/share/doc/p/copyright", "usr/share/doc/p/copyright"),
    ("./usr/share/locale/de/x.mo", None), ("./usr/share/doc/p/changelog.gz", None),
])
def test_image_paths(path: str, where: str | None) -> None:
    assert debian.image_path(path) == where


