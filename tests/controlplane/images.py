"""Container images written by hand, for a node that never pulls.

The real test node has no registry to pull from (and must not reach one): every
image it runs is an archive written from local files (by ``image/archive.py``, the
same code that packs the operator's own image) and imported into its containerd.
Layers are written with fixed timestamps and owners, so the same inputs give the
same image digest.

Names start with ``localhost/``: even an accidental pull could only ask 127.0.0.1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from image.archive import Layer, write_image

PAUSE_IMAGE = "localhost/firebreak/pause:local"
TOOLS_IMAGE = "localhost/firebreak/busybox:local"


def base_layer() -> Layer:
    """The folders every container expects, and users root and nobody."""
    layer = Layer()
    for folder in ("etc", "proc", "sys", "dev", "var/www"):
        layer.folder(folder)
    layer.folder("tmp", mode=0o1777)
    layer.file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
    return layer


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
