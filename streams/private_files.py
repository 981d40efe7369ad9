"""The one rule for files that hold a secret (private keys, passwords): no access for group or
others, like ssh's. Used by the MASB key files (streams.crypto.keys) and the Kafka client's
secret files (streams.kafka_security)."""

from __future__ import annotations

import os
import shlex
import stat


def too_open(path: str | os.PathLike[str], mode: int, what: str = "a private key file", *,
             owner: int | None = None) -> str | None:
    """None if a file of ``mode`` (st_mode) may hold a secret, else the one-line refusal naming
    ``path`` and the fix. With ``owner`` (st_uid) given, a file owned by root, read by a process that
    is not root, may also be group-readable (0440, 0640: a Kubernetes Secret volume with fsGroup;
    PostgreSQL's rule for its sslkey)."""
    allowed_group_read = owner == 0 and os.geteuid() != 0 and not mode & 0o037
    if not mode & 0o077 or allowed_group_read:
        return None
    return (f"{path}: permissions {stat.S_IMODE(mode):04o} are too open; {what} "
            f"must not be accessible by group or others (run: chmod 600 {shlex.quote(str(path))})")
