"""The body of a C2SP tlog-witness add-checkpoint request (https://c2sp.org/tlog-witness):

    old <size>\\n
    <base64 consistency proof hash>\\n      (0 to 63 lines)
    \\n
    <signed checkpoint note>
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from streams.audit.checkpoint import MAX_NOTE_BYTES

MAX_PROOF_LINES = 63
# "old <20 digits>\n" + 63 proof lines of 45 bytes + "\n" + the largest note we accept.
MAX_REQUEST_BYTES = 32 + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_BYTES
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})")


class BadRequest(ValueError):
    """The body is not an add-checkpoint request (HTTP 400)."""


@dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: list[bytes]
    note: str


def format_add_checkpoint(old_size: int, proof: list[bytes], note: str) -> bytes:
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest("request too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise BadRequest("no empty line before the checkpoint")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if not match:
        raise BadRequest("first line must be 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise BadRequest(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for n, line in enumerate(lines[1:], start=1):
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"proof line {n} is not base64") from None
        if len(raw) != 32 or base64.b64encode(raw).decode("ascii") != line:
            raise BadRequest(f"proof line {n} is not a canonical base64 32-byte hash")
        proof.append(raw)
    return AddCheckpoint(int(match.group(1)), proof, note)
