"""`masb audit ...`: the auditor's commands over the exchange log in Kafka (or an export).

    verify [--from-export DIR]        replay the log, check it against every signed checkpoint
    prove EVENT_ID... [--agency A]    inclusion proof file for the events' deliveries (proof index: --index)
    check-proof FILE                  verify a proof file offline, say what the entries record
    consistency OLD_SIZE NEW_SIZE     consistency proof file between two signed checkpoints
    report [filters] [--format F]     who received what, when, under which agreement and legal basis
    export DIR                        the log and its checkpoints as files (streams/audit/export.py)
    shred CASE_REF                    destroy a case's key: its entries can no longer be linked to it

Output never contains entry contents other than what the command exists to show (a report shows
field names and, with the case key store, pseudonymous case references; never field values).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from agents.cli.common import (
    Progress,
    UsageError,
    bootstrap,
    check_case_ref,
    event_id,
    existing_dir,
    existing_file,
    kafka_flags,
    non_negative,
    output_dir,
    output_file,
    topics,
)
from agents.cli.common import load_policy as load_policy_of
from agents.settings import env_or
from streams.audit.merkle import leaf_hash
from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, read_log, witness_quorum
from streams.errors import CheckFailed, shown


class AuditCommandError(CheckFailed):
    """What an audit command looked for is not there or does not hold (exit 1)."""


def register(sub) -> None:
    parser = sub.add_parser("audit", help="verify, prove, report on or export the exchange log")
    parser.set_defaults(func=cmd_audit)
    sub = parser.add_subparsers(dest="action", required=True)

    def log_source(p, kafka: bool = True) -> None:
        if kafka:
            kafka_flags(p)
            p.add_argument("--from-export", metavar="DIR", help="read an export directory instead of Kafka")
        p.add_argument("--policy", help="sharing policy YAML, for the router's checkpoint keys (env MASB_POLICY)")
        p.add_argument("--origin", help="log origin (env MASB_LOG_ORIGIN)")

    p = sub.add_parser("verify", help="replay the whole log and check it against the signed checkpoints")
    log_source(p)
    trust_flags(p)

    p = sub.add_parser("prove", help="inclusion proof of an event's deliveries, as a self-contained JSON file")
    log_source(p)
    p.add_argument("event_id", nargs="+", type=event_id,
                   help="one or more event ids: one file proves all their deliveries")
    p.add_argument("--agency", help="only the deliveries to this agency")
    p.add_argument("--extends", type=non_negative(int), action="append", default=[], metavar="SIZE",
                   help="add a consistency proof from this earlier size (a checkpoint the auditor trusts); the "
                        "checkpoint remembered in --state-dir is added unless --no-state")
    p.add_argument("--out", help="write the proof here (default: stdout)")
    state_flags(p)
    index_flags(p)

    p = sub.add_parser("check-proof", help="verify a proof file offline (no Kafka) and print what it proves")
    log_source(p, kafka=False)
    trust_flags(p)
    p.add_argument("file")

    p = sub.add_parser("consistency", help="consistency proof between two signed checkpoints")
    log_source(p)
    p.add_argument("old_size", type=non_negative(int))
    p.add_argument("new_size", type=non_negative(int))
    p.add_argument("--out", help="write the proof here (default: stdout)")
    index_flags(p)

    p = sub.add_parser("report", help="who received what, when, under which agreement and legal basis")
    log_source(p)
    p.add_argument("--keys-dir", help="router keys dir holding case-keys/ (env MASB_KEYS_DIR); "
                                      "needed for --case-ref and to show case references")
    p.add_argument("--case-ref")
    p.add_argument("--agency")
    p.add_argument("--event-type")
    p.add_argument("--legal-basis")
    p.add_argument("--since", help="ISO 8601 date or date-time (UTC if no zone), inclusive")
    p.add_argument("--until", help="ISO 8601 date or date-time (UTC if no zone), exclusive")
    p.add_argument("--format", choices=["csv", "json", "html"], default="csv")
    p.add_argument("--out", help="write the report here (default: stdout)")

    p = sub.add_parser("export", help="write the log and its checkpoints to a directory for offline audit")
    log_source(p)
    p.add_argument("dir", help="a new or empty directory (created if missing; its parent folder must exist)")

    p = sub.add_parser("shred", help="destroy a case's key (retention ended): its entries become unlinkable")
    kafka_flags(p)
    p.add_argument("case_ref")
    p.add_argument("--keys-dir", help="router keys dir holding case-keys/ (env MASB_KEYS_DIR)")
    p.add_argument("--timeout", type=non_negative(float), default=60.0,
                   help="seconds to wait for the worker that routes the case to destroy the key (default 60)")


def trust_flags(p) -> None:
    """What the auditor already trusts (docs/audit.md, "Trusted checkpoints and local state")."""
    p.add_argument("--trusted-checkpoint", action="append", default=[], metavar="FILE",
                   help="a signed checkpoint (note) the log must contain or extend; repeatable")
    state_flags(p)


def state_flags(p) -> None:
    p.add_argument("--state-dir", help="where the newest verified checkpoint is remembered (env MASB_STATE_DIR; "
                                       "default $XDG_STATE_HOME/masb or ~/.local/state/masb)")
    p.add_argument("--no-state", action="store_true", help="neither use nor update the remembered checkpoint")


def index_flags(p) -> None:
    """The proof index (docs/audit.md, "Proof index"): stored tree hashes, built once from the log."""
    p.add_argument("--index", metavar="DIR", help="proof index folder, built from the log on first use and extended "
                                                  "after (env MASB_INDEX_DIR; default $XDG_CACHE_HOME/masb/index/"
                                                  "<origin> or ~/.cache/masb/index/<origin>)")
    p.add_argument("--no-index", action="store_true", help="recompute the tree from every entry instead (slow on "
                                                           "large logs)")


def origin_of(args) -> str:
    return env_or(getattr(args, "origin", None), "MASB_LOG_ORIGIN", DEFAULT_ORIGIN)


def cmd_audit(args) -> int:
    if args.action == "shred":
        return shred(args)
    if getattr(args, "from_export", None):
        existing_dir(args.from_export, "export directory")
    check_outputs(args)  # before anything slow: a mistyped path fails at once
    policy = load_policy_of(args)
    origin = origin_of(args)
    verifiers = checkpoint_verifiers(policy, origin)
    if args.action in ("check-proof", "verify"):
        trust = load_trust(args, verifiers, origin, witness_quorum(policy))
    if args.action == "check-proof":
        return check_proof_file(str(existing_file(args.file, "proof file")), verifiers, origin, trust)
    if args.action == "verify" and args.from_export:
        return verify_export_dir(args.from_export, verifiers, origin, trust)
    if args.action == "verify":
        return verify(bootstrap(args), topics(args), policy, origin, trust)
    filters = report_filters(args, policy) if args.action == "report" else None
    if args.action == "prove" and args.agency is not None:
        known_agency(policy, args.agency)
    held = remembered_checkpoint(args, verifiers, origin) if args.action == "prove" else None
    workers = report_workers() if args.action == "report" else None  # a bad value fails before the log is read
    if args.action == "consistency" and args.old_size > args.new_size:
        raise UsageError(f"consistency {args.old_size} {args.new_size}: OLD_SIZE must not be above NEW_SIZE")
    if args.action in ("prove", "consistency") and args.index and not args.no_index:
        from streams.audit.tiles import check_index_folder

        check_index_folder(args.index)  # before the log is read
    log = load_log(args, bootstrap(args), topics(args))
    if args.action == "prove":
        return prove(args, log, verifiers, origin, held)
    if args.action == "consistency":
        return consistency(args, log, verifiers, origin)
    if args.action == "report":
        return report(args, filters, log, verifiers, origin, witness_quorum(policy), workers)
    return export(args, log, verifiers, origin, topics(args))


def check_outputs(args) -> None:
    """Where the command will write: a file in an existing folder, or a new or empty export folder."""
    if getattr(args, "out", None):
        output_file(args.out, "--out")
    if args.action == "export":
        from streams.audit.export import CHECKPOINTS_FILE, ENTRIES_FILE, MANIFEST_FILE

        directory = output_dir(args.dir, "export directory")
        held = [n for n in (ENTRIES_FILE, CHECKPOINTS_FILE, MANIFEST_FILE) if (directory / n).exists()]
        if held:
            raise UsageError(f"export directory {directory} already holds an export ({held[0]}); give a new directory")


# -- what the auditor already trusts ------------------------------------------------------------
class Trust:
    """Trusted checkpoints (files and the remembered one), the witness quorum, and the state to update."""

    def __init__(self, trusted, witnesses, state, origin: str) -> None:
        self.trusted = trusted
        self.witnesses = witnesses
        self.state = state
        self.origin = origin

    def remember(self, opened) -> None:
        """After a successful check: remember the checkpoint relied on, if newer than what is held."""
        if self.state is None or opened is None:
            return
        try:
            if self.state.advance(self.origin, opened.note, opened.checkpoint):
                print(f"  remembered: checkpoint of size {opened.checkpoint.size} in {self.state.path(self.origin)}")
        except OSError as exc:
            _note(f"could not remember the checkpoint in {self.state.directory} ({type(exc).__name__})")


def _note(text: str) -> None:
    """A note about how the command ran (not about the log it checks): a message, so on stderr."""
    print(f"masb: note: {text}", file=sys.stderr, flush=True)


def state_dir_of(args) -> Path:
    """--state-dir, else MASB_STATE_DIR, else the XDG default; exit 2 naming the setting if it, or a
    folder above it, is a file (it is created when first written, with its parents)."""
    from streams.audit.trust import default_state_dir

    if args.state_dir is not None:
        path, name = Path(args.state_dir), "--state-dir"
    else:
        path = default_state_dir()
        name = "MASB_STATE_DIR" if os.environ.get("MASB_STATE_DIR") else "the state directory"
    existing = next((p for p in (path, *path.parents) if os.path.exists(p)), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{name} {path} is not a directory" if existing == path
                         else f"{name} {path}: {existing} is not a directory")
    return path


def load_trust(args, verifiers, origin: str, witnesses) -> Trust:
    from streams.audit.trust import TrustError, load_trusted_checkpoint

    state_dir = None if args.no_state else state_dir_of(args)
    try:
        trusted = [load_trusted_checkpoint(path, verifiers, origin) for path in args.trusted_checkpoint]
    except TrustError as exc:
        raise AuditCommandError(str(exc)) from None
    state, remembered = _remembered(state_dir, verifiers, origin)
    if remembered is not None:
        trusted.append(remembered)
    return Trust(trusted, witnesses if witnesses.members or witnesses.quorum else None, state, origin)


def remembered_checkpoint(args, verifiers, origin: str):
    """The checkpoint this auditor's earlier `verify` or `check-proof` remembered (a TrustedCheckpoint),
    or None (none yet, --no-state, or it no longer verifies: a note says so)."""
    return _remembered(None if args.no_state else state_dir_of(args), verifiers, origin)[1]


def _remembered(state_dir: Path | None, verifiers, origin: str):
    """(the local state, its checkpoint for the origin or None); (None, None) without a state dir."""
    from streams.audit.trust import CheckpointState, TrustError

    if state_dir is None:
        return None, None
    state = CheckpointState(state_dir)
    try:
        remembered, warning = state.load(origin, verifiers)
    except TrustError as exc:
        raise AuditCommandError(str(exc)) from None
    if warning:
        _note(warning)
    return state, remembered


def _print_trust(report, trust: Trust) -> None:
    for source in report.trusted_checked:
        size = next(t.checkpoint.size for t in trust.trusted if t.source == source)
        print(f"  held against: {source} (size {size})")
    if trust.witnesses is not None and report.relied_on is not None:
        cosigners = ", ".join(report.relied_on.cosigners) or "none"
        print(f"  witnesses: the checkpoint of size {report.relied_on.checkpoint.size} is cosigned by {cosigners} "
              f"({trust.witnesses.describe()})")


# -- reading the log -----------------------------------------------------------------------------
class Log:
    def __init__(self, entries: list[tuple[int, bytes]], checkpoints: list[str], malformed: list[int]) -> None:
        self.entries = entries
        self.checkpoints = checkpoints
        self.malformed = malformed


def load_log(args, bootstrap, topics) -> Log:
    progress = Progress("reading audit entries")
    if getattr(args, "from_export", None):
        from streams.audit.export import ExportError, read_export

        try:
            it, notes, _ = read_export(args.from_export)
            entries = []
            for item in it:
                entries.append(item)
                if len(entries) % 10_000 == 0:
                    progress(len(entries))
        except ExportError as exc:
            raise AuditCommandError(f"export {args.from_export}: {exc}") from None
        progress.done()
        return Log(entries, notes, [])
    snapshot = asyncio.run(read_log(bootstrap, topics, progress))
    progress.done()
    return Log(snapshot.entries, snapshot.checkpoints, snapshot.malformed_checkpoint_offsets)


def _write(text: str, out: str | None, what: str) -> None:
    if out:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:  # checked before the work began; changed since
            raise UsageError(f"--out {out}: cannot write ({exc.strerror or type(exc).__name__})") from None
        print(f"masb: {what} written to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


# -- verify --------------------------------------------------------------------------------------
def _print_verify(report, problems: list[str], source: str, trust: Trust | None = None) -> int:
    print(f"audit log {source}: {report.entries} entries, {report.checkpoints_checked} signed checkpoints checked")
    if trust is not None:
        _print_trust(report, trust)
    for note in report.notes:
        print(f"  note: {note}")
    if problems:
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        print("audit log NOT intact")
        return 1
    if trust is not None:
        trust.remember(report.relied_on)
    if trust is not None and trust.witnesses is not None and report.witnessed_size < report.entries:
        print(f"audit log intact up to the last checkpoint cosigned by the witnesses (size {report.witnessed_size}); "
              f"{report.entries - report.witnessed_size} newer entries await a witnessed checkpoint")
    elif report.uncovered_entries:
        print(f"audit log intact up to the last signed checkpoint (size {report.verified_size}); "
              f"{report.uncovered_entries} newer entries await the next checkpoint")
    else:
        print("audit log intact: every entry is covered by a valid signed checkpoint")
    return 0


def verify(bootstrap, topics, policy, origin, trust: Trust) -> int:
    from streams.audit.verify import verify_log

    progress = Progress("replaying audit entries")
    snapshot = asyncio.run(read_log(bootstrap, topics, progress))
    progress.done()
    report = verify_log(snapshot.entries, snapshot.checkpoints, checkpoint_verifiers(policy, origin), origin,
                        trusted=trust.trusted, witnesses=trust.witnesses)
    problems = list(report.problems)
    problems += [f"checkpoints topic offset {o}: not a checkpoint record" for o in snapshot.malformed_checkpoint_offsets]
    return _print_verify(report, problems, topics.audit, trust)


def verify_export_dir(directory: str, verifiers: list[str], origin: str, trust: Trust) -> int:
    from streams.audit.export import ExportError, verify_export

    progress = Progress("replaying exported entries")
    try:
        report = verify_export(directory, verifiers, origin, progress, trusted=trust.trusted,
                               witnesses=trust.witnesses)
    except ExportError as exc:
        print(f"  PROBLEM: export {directory}: {exc}")
        print("audit log NOT intact")
        return 1
    progress.done()
    return _print_verify(report, list(report.problems), f"export {directory}", trust)


# -- proofs --------------------------------------------------------------------------------------
def _with_tree(args, log: Log, verifiers, origin, make):
    """make(tree) with the log's tree: the proof index (synced with the log and checked against the
    signed checkpoints; rebuilt once if a proof finds it altered), or None with --no-index."""
    if args.no_index:
        return make(None)
    from streams.audit.proof import signed_checkpoints
    from streams.audit.tiles import TileIndex, TileIndexError, default_index_dir, sync_index

    directory = Path(args.index) if args.index else default_index_dir(origin)
    entries = [d for _, d in log.entries]

    def note(line: str) -> None:
        print(f"masb: {line}", file=sys.stderr, flush=True)

    def build_progress():
        return Progress("building the proof index") if sys.stderr.isatty() else None

    progress = build_progress()
    signed = [(cp.size, cp.root) for cp in signed_checkpoints(log.checkpoints, verifiers, origin)]
    index = sync_index(directory, entries, signed, progress=progress, note=note)
    if progress is not None:
        progress.done()
    try:
        return make(index)
    except TileIndexError as exc:
        note(f"{exc}; rebuilding it from the log ({len(entries):,} entries)")
        progress = build_progress()
        index = TileIndex.rebuild(directory, (leaf_hash(e) for e in entries), progress)
        if progress is not None:
            progress.done()
        return make(index)


def prove(args, log: Log, verifiers, origin, held=None) -> int:
    """held: the remembered checkpoint (TrustedCheckpoint) the proof is to be shown to extend, so
    that `check-proof` with the same state accepts it (docs/audit.md)."""
    from streams.audit.entry import AuditEntryError, decode_entry
    from streams.audit.proof import ProofError, make_inclusion_proof

    wanted = set(args.event_id)
    # An entry holds its event id verbatim (an Avro string): skip the others without decoding them.
    needles = [e.encode() for e in wanted] if len(wanted) <= 16 else None
    indexes, found = [], set()
    for index, (_, data) in enumerate(log.entries):
        if needles is not None and not any(n in data for n in needles):
            continue
        try:
            e = decode_entry(data)
        except AuditEntryError:
            continue
        if e["kind"] == "DELIVERY" and e["event_id"] in wanted and (not args.agency or e["agency_id"] == args.agency):
            indexes.append(index)
            found.add(e["event_id"])
    missing = [e for e in args.event_id if e not in found]
    if missing:
        who = f" to {args.agency}" if args.agency else ""
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AuditCommandError(f"no delivery of event {missing[0]}{who} in the log{more}")
    try:
        doc = _with_tree(args, log, verifiers, origin, lambda tree: make_inclusion_proof(
            [d for _, d in log.entries], log.checkpoints, verifiers, origin, indexes,
            positions=[p for p, _ in log.entries], extends=args.extends, tree=tree,
            held=[held.checkpoint.size] if held is not None else []))
    except ProofError as exc:
        raise AuditCommandError(str(exc)) from None
    if held is not None and held.checkpoint.size not in args.extends:
        size, ours = doc["tree_size"], held.checkpoint.size
        if ours < size:
            _note(f"the proof carries a consistency proof from {held.source} (size {ours}) to its checkpoint "
                  f"(size {size})")
        elif ours > size:
            _note(f"the proof's checkpoint (size {size}) is older than {held.source} (size {ours}); "
                  "`check-proof` with that state will refuse it")
    _write(json.dumps(doc, indent=2) + "\n", args.out, f"inclusion proof of {len(indexes)} entries")
    return 0


def consistency(args, log: Log, verifiers, origin) -> int:
    from streams.audit.proof import ProofError, make_consistency_proof

    try:
        doc = _with_tree(args, log, verifiers, origin, lambda tree: make_consistency_proof(
            [d for _, d in log.entries], log.checkpoints, verifiers, origin, args.old_size, args.new_size,
            tree=tree))
    except ProofError as exc:
        raise AuditCommandError(str(exc)) from None
    _write(json.dumps(doc, indent=2) + "\n", args.out, f"consistency proof {args.old_size} -> {args.new_size}")
    return 0


def _when(value) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else "-"


def check_proof_file(path: str, verifiers, origin, trust: Trust) -> int:
    from streams.audit.proof import ProofError, check_proof, parse_proof_file

    try:
        checked = check_proof(parse_proof_file(Path(path).read_bytes()), verifiers, origin,
                              trusted=trust.trusted, witnesses=trust.witnesses)
    except ProofError as exc:
        print(f"proof {path}: REFUSED: {exc}")
        return 1
    for t in trust.trusted:
        print(f"  held against: {t.source} (size {t.checkpoint.size})")
    if trust.witnesses is not None:
        print(f"  witnesses: the checkpoint of size {checked.checkpoint.size} is cosigned by "
              f"{', '.join(checked.opened.cosigners) or 'none'} ({trust.witnesses.describe()})")
    for note in checked.notes:
        print(f"  note: {note}")
    trust.remember(checked.opened)
    if checked.type == "consistency":
        print(f"proof {path}: VALID: the signed checkpoint of size {checked.checkpoint.size} is an append-only "
              f"extension of the signed checkpoint of size {checked.old_checkpoint.size} (log {origin})")
        return 0
    print(f"proof {path}: VALID: {len(checked.entries)} entries are in the log {origin} as signed at size "
          f"{checked.checkpoint.size}")
    for index, e in checked.entries:
        print(f"  entry {index + 1}: {e['kind']} of event {e['event_id']} ({e['event_type']}) to {e['agency_id']}")
        print(f"    sent {_when(e['recorded_at'])}, deliver by {_when(e['deliver_by'])}")
        print(f"    agreement {e['agreement_id']} v{e['agreement_version']}, legal basis {e['legal_basis']}, "
              f"policy version {e['policy_version']}")
        print(f"    fields: {', '.join(e['fields']) or '-'}")
        print(f"    envelope sha256 {e['envelope_sha256']}, recipient key {e['recipient_key_id']}")
        if e["case_key_id"]:
            print(f"    case: sealed under case key {e['case_key_id']}")
    return 0


# -- report, export, shred -----------------------------------------------------------------------
def _case_secrets(args):
    """The case-key secrets of the keys dir given (--keys-dir or MASB_KEYS_DIR; MASB_CASE_KEYS_DIR
    if they are kept apart), or None."""
    from streams.audit.case_keys import store_dir
    from streams.audit.shared_case_keys import CaseKeySecrets

    keys_dir = env_or(getattr(args, "keys_dir", None), "MASB_KEYS_DIR", None)
    if not keys_dir or not store_dir(keys_dir).is_dir():
        return None
    return CaseKeySecrets.load(store_dir(keys_dir))


def _case_store(args):
    """The shared case-key store as it is now in Kafka (docs/audit.md, "Case keys"), or None."""
    from streams.audit.shared_case_keys import CaseKeyView

    secrets = _case_secrets(args)
    if secrets is None:
        return None
    return asyncio.run(CaseKeyView.read(bootstrap(args), topics(args).case_keys, secrets))


def report_filters(args, policy):
    """The report's filters, checked before the log is read: dates that are dates, an agency the
    policy knows, a known event type and legal basis, and the case key store for --case-ref (exit 2)."""
    from streams.audit.report import Filters, parse_time
    from streams.codec import EVENT_TYPES
    from streams.policy.vocab import LEGAL_BASES

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    if since and until and since >= until:
        raise UsageError(f"--since {shown(args.since)} is not before --until {shown(args.until)}: nothing could match")
    if args.agency is not None:
        known_agency(policy, args.agency)
    if args.event_type is not None and args.event_type not in EVENT_TYPES:
        raise UsageError(f"event type {shown(args.event_type)} is not an event type MASB knows",
                         hint=f"one of {', '.join(EVENT_TYPES)}")
    if args.legal_basis is not None and args.legal_basis not in LEGAL_BASES:
        raise UsageError(f"legal basis {shown(args.legal_basis)} is not a legal basis MASB knows",
                         hint=f"one of {', '.join(LEGAL_BASES)}")
    if args.case_ref is not None:
        check_case_ref(args.case_ref, "--case-ref")
    if args.case_ref is not None and _case_secrets(args) is None:
        raise UsageError("--case-ref needs the case key store: give the router's keys dir (--keys-dir or "
                         "MASB_KEYS_DIR) holding case-keys/", hint="case references are sealed in the log")
    return Filters(case_ref=args.case_ref, agency=args.agency, event_type=args.event_type,
                   legal_basis=args.legal_basis, since=since, until=until)


def known_agency(policy, agency: str) -> None:
    """--agency names an agency of the policy (exit 2 otherwise, before the log is read)."""
    if policy.agency(agency) is None:
        raise UsageError(f"agency {shown(agency)} is not in the sharing policy (version {policy.version})",
                         hint="agency ids are listed under agencies: in the policy")


def report_workers() -> int | None:
    """MASB_REPORT_WORKERS: processes that decode the log's entries for a report, 1 to
    MAX_REQUESTED (1: this process only; unset: streams/audit/decoding.py decides from the log's
    size and the cores; never more than the cores nor than the log's chunks are started)."""
    from streams.audit.decoding import MAX_REQUESTED

    value = env_or(None, "MASB_REPORT_WORKERS", None)
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) < 1:
        raise UsageError(f"MASB_REPORT_WORKERS={shown(value)}: not a whole number of processes (1 or more)")
    if int(value) > MAX_REQUESTED:
        raise UsageError(f"MASB_REPORT_WORKERS={shown(value)}: more than {MAX_REQUESTED} processes",
                         hint=f"give 1 to {MAX_REQUESTED}; no more are started than this machine has cores")
    return int(value)


def report(args, filters, log: Log, verifiers, origin, witnesses=None, workers: int | None = None) -> int:
    from streams.audit.report import RENDERERS, build_report, verify_for_report

    result = build_report(log.entries, filters, _case_store(args), workers=workers)
    verification = verify_for_report(log.entries, log.checkpoints, verifiers, origin)
    if verification.checkpoint is not None and witnesses is not None and witnesses.members:
        # The witnesses of the policy whose cosignatures on the checkpoint relied on verify.
        from dataclasses import replace

        from streams.audit.trust import open_witnessed_checkpoint

        note = log.checkpoints[verification.checkpoint.number - 1]
        cosigners = open_witnessed_checkpoint(note, verifiers, origin, witnesses).cosigners
        verification = replace(verification, checkpoint=replace(verification.checkpoint, cosigners=cosigners))
    result.set_verification(verification)
    if filters.case_ref is not None and not result.deliveries and not result.refusals:
        # A report that is empty for its case says why where the user looks, not only inside it.
        for note in result.notes or ["no delivery or refusal of that case matches the filters"]:
            print(f"masb: note: {note}", file=sys.stderr)
    _write(RENDERERS[args.format](result), args.out, f"{args.format} report")
    if result.log.intact:
        return 0
    problems = result.log.problems
    first = f": {problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "") \
        if problems else ""
    print(f"masb: the audit log is NOT intact{first}; the report says so; run `masb audit verify`", file=sys.stderr)
    return 1


def export(args, log: Log, verifiers, origin, topics) -> int:
    from streams.audit.export import ExportError, write_export

    meta = {"origin": origin, "verifier_keys": verifiers, "source_topic": topics.audit, "partition": 0,
            "first_offset": log.entries[0][0] if log.entries else None,
            "exported_at": _when(datetime.now(timezone.utc))}
    try:
        manifest = write_export(args.dir, log.entries, log.checkpoints, meta)
    except ExportError as exc:
        raise AuditCommandError(f"export {args.dir}: {exc}") from None
    print(f"exported {manifest.entry_count} entries and {manifest.checkpoint_count} checkpoints to {args.dir}")
    return 0


def shred(args) -> int:
    """Ask the worker that routes the case to destroy its key, and wait until it has (docs/audit.md)."""
    from agents.shredding import request_value
    from streams.audit.shared_case_keys import CaseKeyView
    from streams.kafka import producer, start_client

    check_case_ref(args.case_ref, "CASE_REF")
    secrets = _case_secrets(args)
    if secrets is None:
        raise UsageError("no case key store: give the router's keys dir (--keys-dir or MASB_KEYS_DIR)")
    names = topics(args)
    view = asyncio.run(CaseKeyView.read(bootstrap(args), names.case_keys, secrets))
    key = view.find(args.case_ref)
    if key is None:
        raise AuditCommandError("no live key for that case reference (never routed, or already shredded)")
    partition = view.partition_of(args.case_ref)

    async def request() -> None:
        out = producer(bootstrap(args))
        await start_client(out, bootstrap(args))
        try:
            await out.send_and_wait(names.case_key_shreds, request_value(secrets.lookup(args.case_ref)),
                                    partition=partition)
        finally:
            await out.stop()

    asyncio.run(request())
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(1)
        view = asyncio.run(CaseKeyView.read(bootstrap(args), names.case_keys, secrets))
        if view.find(args.case_ref) is None and key.key_id in view.shredded:
            print(f"case key {key.key_id} destroyed: the log still verifies; its entries can no longer be linked "
                  "to the case")
            return 0
    raise AuditCommandError(f"no worker destroyed case key {key.key_id} within {args.timeout:.0f}s; the request "
                            f"stays queued on {names.case_key_shreds} partition {partition} and is carried out "
                            "when a worker routes that partition")
