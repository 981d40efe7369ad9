"""Files MASB reads at run time (Avro schemas), found through the installed package.

They ship inside the wheel as package data, so every command works from any folder after a plain
``pip install``; nothing is read relative to a source checkout or the working directory.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

# A regular (not zipped) install: the package's resources are plain files on disk.
SCHEMA_ROOT = Path(str(files("streams") / "schemas"))


def schema_file(*parts: str) -> Path:
    """Path of a schema shipped with MASB, e.g. ``schema_file("audit", "audit_entry_v1.avsc")``."""
    return SCHEMA_ROOT.joinpath(*parts)


def installed(path: Path) -> bool:
    """Whether ``path`` lies in an installed package (site-packages), not in a source checkout:
    MASB never writes there (it may be read-only, and a reinstall would undo the change)."""
    return any(part in ("site-packages", "dist-packages") for part in Path(path).resolve().parts)


def user_cache_dir() -> Path:
    """MASB's folder of rebuildable files: $XDG_CACHE_HOME/masb if that is an absolute path, else
    ~/.cache/masb (the XDG Base Directory specification)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "masb"

