"""add-checkpoint (C2SP tlog-witness) over the witness's state, without HTTP: one call in, one
status and body out, so the rules are tested directly and the HTTP layer stays thin."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from streams.audit.checkpoint import (
    CheckpointError,
    NoteVerifier,
    open_note_verified,
    parse_checkpoint_body,
    split_note,
)
from streams.audit.cosignature import CosignatureSigner
from streams.audit.merkle import EMPTY_ROOT, verify_consistency

from .protocol import SIZE_CONTENT_TYPE, BadRequest, parse_add_checkpoint
from .state import LogState, WitnessState

log = logging.getLogger("masb.witness")
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    content_type: str = TEXT


class WitnessService:
    """signer: the witness's cosigner key; logs: origin -> the log's Ed25519 verifiers it trusts."""

    def __init__(self, signer: CosignatureSigner, logs: Mapping[str, Sequence[NoteVerifier]], state: WitnessState,
                 clock: Callable[[], float] = time.time) -> None:
        self.signer = signer
        self.logs = {origin: list(keys) for origin, keys in logs.items()}
        self.state = state
        self.clock = clock
        # Checking the old size and persisting the new checkpoint are one step (C2SP: else two
        # concurrent requests could roll the witness back).
        self._lock = threading.Lock()

    def add_checkpoint(self, body: bytes) -> Response:
        try:
            request = parse_add_checkpoint(body)
        except BadRequest as exc:
            return Response(400, f"bad request: {exc}\n")
        origin = request.note.split("\n", 1)[0]
        verifiers = self.logs.get(origin)
        if verifiers is None:
            return Response(404, "unknown log origin\n")
        try:
            text, verified = open_note_verified(request.note, verifiers)
            checkpoint = parse_checkpoint_body(text)
        except CheckpointError as exc:
            if exc.reason in ("bad_signature", "no_known_signature"):
                return Response(403, f"checkpoint not signed by the log: {exc}\n")
            return Response(400, f"bad checkpoint: {exc}\n")
        with self._lock:
            stored = self.state.latest(origin)
            self._keep_if_fork(stored, request.note, verified, checkpoint)
            if request.old_size > checkpoint.size:
                return Response(400, "old size is larger than the checkpoint's size\n")
            return self._check_and_cosign(origin, stored, request, text, verified, checkpoint)

    def _keep_if_fork(self, stored: LogState | None, note: str, verified: list, checkpoint) -> None:
        """Whatever the request's old size and proof: the log signed this checkpoint and the stored one,
        of one size with different roots; both cannot be true, so the two signed notes are evidence.
        Nothing else is: a proof that does not verify is anyone's work, not the log's."""
        if stored is None or checkpoint.size != stored.size or checkpoint.root == stored.root:
            return
        kept = self.state.keep_fork(stored, self._signed_only(note, verified), checkpoint.root)
        log.error("log %s: fork: a second checkpoint of size %d with another root; refused; %s",
                  stored.origin, stored.size, f"evidence in {kept}" if kept else "evidence not kept")

    def _check_and_cosign(self, origin, stored, request, text, verified, checkpoint) -> Response:
        known = stored.size if stored else 0
        if request.old_size != known:
            return Response(409, f"{known}\n", SIZE_CONTENT_TYPE)
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            return Response(422, "a checkpoint of size 0 must have the empty tree's root\n")
        if request.old_size == 0:
            if request.proof:
                return Response(422, "a consistency proof from size 0 must be empty\n")
        elif not verify_consistency(stored.size, checkpoint.size, stored.root, checkpoint.root, request.proof):
            if checkpoint.size == stored.size:  # a fork, kept as evidence above
                return Response(422, f"a second checkpoint of size {checkpoint.size} with another root: not cosigned\n")
            log.warning("log %s: consistency proof from size %d to %d does not verify; refused",
                        origin, stored.size, checkpoint.size)
            return Response(422, f"the consistency proof from size {stored.size} to {checkpoint.size} does not "
                                 "verify: not cosigned\n")
        line = self.signer.cosign(text, int(self.clock()))
        self.state.store(LogState(origin, checkpoint.size, checkpoint.root,
                                  self._as_cosigned(request.note, text, verified, line)))
        log.info("log %s: cosigned size %d (previous %d)", origin, checkpoint.size, known)
        return Response(200, line)

    @staticmethod
    def _signature_lines(note: str, verified: list) -> str:
        """The note's signature lines by the log keys we verified (other cosignatures dropped)."""
        keys = {(v.name, v.key_id) for v in verified}
        _, signatures = split_note(note)
        return "".join(raw_line for name, raw, raw_line in signatures if (name, raw[:4]) in keys)

    @classmethod
    def _signed_only(cls, note: str, verified: list) -> str:
        """The note as the log signed it: its text and the log signatures we verified."""
        text, _ = split_note(note)
        return f"{text}\n{cls._signature_lines(note, verified)}"

    @classmethod
    def _as_cosigned(cls, note: str, text: str, verified: list, line: str) -> str:
        """The checkpoint with the log signatures we verified and our cosignature (what monitors get)."""
        return f"{text}\n{cls._signature_lines(note, verified)}{line}"

    def latest_note(self, hex_hash: str) -> str | None:
        """The latest cosigned checkpoint of the log whose origin hashes to hex_hash (monitoring API)."""
        if len(hex_hash) != 64 or any(c not in "0123456789abcdef" for c in hex_hash):
            return None
        state = self.state.latest_by_hash(hex_hash)
        return state.note if state is not None and state.origin in self.logs else None
