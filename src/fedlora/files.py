"""Files a run writes get the modes any file the user writes gets.

Folders made with :func:`tempfile.mkdtemp` (to be renamed into place atomically) are private
(0700), and some writers create files 0600; :func:`follow_umask` gives a finished folder the
modes the user's umask gives a new folder and file (0755 / 0644 under the usual 022), so a
team can read a run's outputs like anything else its members write.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a newly created
    folder (``0o777``) or file (``0o666``) gets under the current umask."""
    mask = current_umask()
    if path.is_file():
        path.chmod(0o666 & ~mask)
        return
    path.chmod(0o777 & ~mask)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            (Path(root) / name).chmod(0o777 & ~mask)
        for name in files:
            (Path(root) / name).chmod(0o666 & ~mask)
