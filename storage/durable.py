"""fsync of a file or a directory: what makes a write, a rename or a new directory entry survive a
power cut. A rename is durable only once its directory is fsynced, so every atomic replace here ends
with `fsync_path(parent, directory=True)`. (cxrmodel keeps its own copy: it imports nothing of storage.)"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
