"""`masb keys generate|rotate|export-public|revoke`: key pairs and their life cycle (docs/keys.md)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from agents.cli.common import UsageError, existing_file, output_dir, output_file, print_json
from streams.errors import CheckFailed, shown


def register(sub) -> None:
    p = sub.add_parser("keys", help="generate, rotate, export or revoke keys")
    ksub = p.add_subparsers(dest="action", required=True)
    for action, text in (("generate", "new key pairs for a party (private files 0600)"),
                         ("rotate", "a new key pair beside the old one, and what to change in the policy")):
        q = ksub.add_parser(action, help=text)
        q.add_argument("--owner", help="unit, agency or router id as in the policy (needed for signing, exchange "
                                       "and both; refused with --kind pseudonym)")
        q.add_argument("--kind", choices=["signing", "exchange", "both", "pseudonym"], default="both",
                       help="signing, exchange, both (default), or pseudonym: the case pseudonym key the units "
                            "and the router share, owned by no one (docs/keys.md)")
        q.add_argument("--out", default="keys", help="directory for the private key files (written 0600; created "
                                                     "if missing, its parent folder must exist)")
    q = ksub.add_parser("case-secrets", help="the router's case-key secrets (index.key, wrap.key), made once and "
                                            "copied to every worker host")
    q.add_argument("--out", default="keys", help="the router's keys directory (they go into its case-keys/; "
                                                 "created if missing, its parent folder must exist)")
    q = ksub.add_parser("export-public", help="the public record of a private key file, to put in the policy")
    q.add_argument("key_file", help="the private key file")
    q = ksub.add_parser("revoke", help="mark a key revoked in the policy (comments and layout kept)")
    q.add_argument("--policy", required=True, help="the policy file to edit")
    q.add_argument("--owner", required=True, help="unit, agency or router id")
    q.add_argument("--key-id", required=True, help="the key id to mark revoked")
    q.add_argument("--output", dest="out_policy",
                   help="write the edited policy here instead of in place (to diff before deploying)")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args) -> int:
    if args.action in ("generate", "rotate"):
        return _generate(args)
    if args.action == "case-secrets":
        return _case_secrets(args)
    if args.action == "export-public":
        from streams.crypto.keys import load_private_key, public_record

        print(json.dumps(public_record(load_private_key(existing_file(args.key_file, "key file"))), indent=2))
        return 0
    return _revoke_key(args)


def _case_secrets(args) -> int:
    from streams.audit.case_keys import CASE_KEYS_DIR, INDEX_FILE
    from streams.audit.shared_case_keys import WRAP_FILE, CaseKeySecrets

    output_dir(args.out, "--out")
    directory = Path(args.out) / CASE_KEYS_DIR
    existed = [name for name in (INDEX_FILE, WRAP_FILE) if (directory / name).exists()]
    secrets = CaseKeySecrets.create(directory)
    print_json({"wrote": str(directory), "kept": existed, "wrap_key_id": secrets.wrap_key_id})
    print(f"masb: copy {directory}/{INDEX_FILE} and {WRAP_FILE} (0600) to every worker host and keep them backed up: "
          "without them no case can be linked to its audit entries (docs/audit.md, \"Case keys\")", file=sys.stderr)
    return 0


def _generate(args) -> int:
    from streams.crypto.keys import generate_key, public_record, write_private_key

    from streams.policy.parse import ID_PATTERN

    # Everything is checked before the folder is made: a refused command leaves nothing behind.
    if args.kind == "pseudonym" and args.owner is not None:
        raise UsageError("--owner is not for --kind pseudonym: the case pseudonym key is shared by the units and "
                         "the router, owned by no one (docs/keys.md)")
    if args.kind != "pseudonym" and not args.owner:
        raise UsageError(f"keys {args.action} --kind {args.kind} needs --owner (the unit, agency or router id)")
    if args.kind != "pseudonym" and not ID_PATTERN.fullmatch(args.owner):
        raise UsageError(f"--owner {shown(args.owner)}: not a party id (1-64 lowercase letters, digits or hyphens, not "
                         "starting or ending with a hyphen, as in the policy)")
    out = output_dir(args.out, "--out")
    out.mkdir(exist_ok=True)
    if args.kind == "pseudonym":
        return _generate_pseudonym_key(args, out)
    kinds = ["signing", "exchange"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        earlier = sorted(p.name.split(".")[-2] for p in out.glob(f"{args.owner}.{kind}.*.key"))
        if earlier and args.action == "generate":
            print(f"masb: note: {out} already holds {kind} key {', '.join(earlier)} of {args.owner}; this makes "
                  f"another (the policy's key ids say which is used; `masb keys rotate` is the command for a "
                  f"planned new key, docs/keys.md)", file=sys.stderr)
        record = generate_key(args.owner, kind)
        path = out / f"{args.owner}.{kind}.{record.key_id}.key"
        write_private_key(path, record)
        print_json({"wrote": str(path), **public_record(record)})
    if args.action == "rotate":
        print("masb: add the new public key to the policy as active and mark the old one retired "
              "(docs/keys.md); old data stays readable while the old key file is kept", file=sys.stderr)
    return 0


def _generate_pseudonym_key(args, out: Path) -> int:
    """A case pseudonym key (0600): a secret, so only its id and file are printed."""
    from streams.crypto.pseudonym import file_name, generate_pseudonym_key, write_pseudonym_key

    key = generate_pseudonym_key()
    path = out / file_name(key)
    write_pseudonym_key(path, key)
    print_json({"wrote": str(path), "kind": "pseudonym", "key_id": key.key_id})
    print("masb: give a copy of this file to every unit and to the router (their keys directories); "
          + ("keep the old file until no record keyed under it is needed (docs/keys.md)" if args.action == "rotate"
             else "it is a secret: never to agencies or the broker's operator"), file=sys.stderr)
    return 0


def _revoke_key(args) -> int:
    """Mark one key revoked by editing only its status and policy_version (comments and layout kept)."""
    from streams.policy import PolicyError, diff, load_policy, load_policy_text
    from streams.policy.revoke import RevokeError, revoke_key_text

    path = existing_file(args.policy, "policy file")
    out = output_file(args.out_policy, "--output") if args.out_policy else path
    try:
        edit = revoke_key_text(path.read_text(encoding="utf-8"), args.owner, args.key_id)
    except RevokeError as exc:
        raise UsageError(f"policy file {path}: {exc}") from None
    if edit is None:
        print(f"masb: key {args.key_id} of {args.owner} is already revoked; nothing changed", file=sys.stderr)
        return 0
    try:
        old_policy = load_policy(path)
    except PolicyError:
        old_policy = None  # e.g. two active keys while replacing one: only the result must pass the checks
    try:  # checked before anything is written; problems name the file it is meant for
        new_policy = load_policy_text(edit.text, out.name)
    except PolicyError as exc:
        raise CheckFailed(f"refused: with key {args.key_id} revoked the policy fails its checks; "
                          f"nothing written\n{exc}",
                          hint=f"to replace the only active key of {args.owner}, add its new key as active "
                               "first (docs/operations.md)") from None
    fd, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(edit.text)
        os.chmod(temp_name, path.stat().st_mode & 0o777)
        os.replace(temp_name, out)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
    print_json({"revoked": args.key_id, "owner": args.owner, "key_list": edit.key_list,
                "previous_status": edit.previous_status,
                "policy_version": [edit.old_version, edit.new_version], "wrote": str(out)})
    if old_policy is not None:
        print(diff(old_policy, new_policy).render())
    print(f"masb: review with `masb policy diff <policy in force> {out}` and get it approved before "
          f"deploying it (docs/operations.md)", file=sys.stderr)
    return 0
