"""Files MASB reads at run time (Avro schemas), found through the installed package.

They ship inside the wheel as package data, so every command works from any folder after a plain
``pip install``; nothing is read relative to a source checkout or the working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# A regular (not zipped) install: the package's resources are plain files on disk.
SCHEMA_ROOT = Path(str(files("streams") / "schemas"))


def schema_file(*parts: str) -> Path:
    """Path of a schema shipped with MASB, e.g. ``schema_file("audit", "audit_entry_v1.avsc")``."""
    return SCHEMA_ROOT.joinpath(*parts)
