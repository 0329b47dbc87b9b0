"""``python -m image``: build (or find in the cache) the operator's image and put the
archive in ``dist/``, ready for ``ctr images import``, ``docker load`` or
``kind load image-archive``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from .build import REPO, ImageError, ensure_image


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m image", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "dist",
                        help="folder for the image archive (default: dist/)")
    args = parser.parse_args()
    began = time.monotonic()
    try:
        image = ensure_image()
    except ImageError as exc:
        print(f"make image: {exc}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / image.path.name
    if not (target.exists() and os.path.samefile(target, image.path)):
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            os.link(image.path, partial)
        except OSError:  # another file system than the cache's
            shutil.copyfile(image.path, partial)
        partial.replace(target)
    size = image.path.stat().st_size
    print(f"{target}\n  {image.tag}, image ID {image.id}, {size / 1e6:.0f} MB, "
          f"{len(image.packages)} Debian packages; "
          f"{'built ' + ', '.join(image.built) if image.built else 'from the cache'} "
          f"in {time.monotonic() - began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
