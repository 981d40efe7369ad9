"""One-shot set-up of the compose demo (deploy/compose/compose.yaml, service `setup`).

Runs inside the masb image: makes everything a deployment of the packaged demo policy template
needs (agents.deployment.prepare_deployment, as `masb demo` does): a private key for every key the
template names (`masb keys generate`: the router's, each unit's signing and exchange keys, each
agency's exchange key), the case pseudonym key (`masb keys generate --kind pseudonym`), the case-key
secrets (`masb keys case-secrets`), and the policy rendered with the public keys. It sorts them into
one volume per holder, so that each service mounts, read-only, only what it must hold:

    OUT/policy/policy.yaml                   the sharing policy (public keys only), for everyone
    OUT/router/*.key                         the router's signing and exchange keys: the workers
    OUT/router/pseudonym.<kid>.secret        the case pseudonym key (the router checks record keys with it)
    OUT/router/case-keys/{index,wrap}.key    the case-key secrets (docs/audit.md, "Case keys")
    OUT/ingest/signing.key                   the signing key of the unit the ingest serves
    OUT/ingest/pseudonym.secret              the case pseudonym key it keys records with
    OUT/ingest/ingest.token                  the bearer token its case system presents
    OUT/parties/<owner>/*.key                every other key: each agency's exchange key, each unit's
                                             exchange key (its notices) and the other units' signing
                                             keys, with a copy of the pseudonym key for each unit; for
                                             trying `masb publish`, `consume` and `status` with
                                             `docker compose run cli`

Files are owned by the image's user (uid 10001) with mode 0600 (directories 0700); the policy
is 0644. Run again, it changes nothing: keys are generated once per set of volumes.

    python prepare_demo.py OUT UNIT_ID
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from agents.deployment import prepare_deployment
from streams.audit.case_keys import CASE_KEYS_DIR
from streams.crypto.keys import load_private_key

OWNER = (10001, 10001)  # the masb user of the image (Dockerfile)


def place(source: Path, target: Path, mode: int = 0o600) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, mode)


def write_secret(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def owned_by_masb(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, *OWNER)
        if path.is_dir():
            os.chmod(path, 0o700)


def main(out: Path, unit_id: str) -> int:
    policy_file = out / "policy" / "policy.yaml"
    if policy_file.exists():
        print(f"masb compose setup: {policy_file} exists; keys were generated before, nothing to do")
        return 0
    with tempfile.TemporaryDirectory() as work:
        deployment = prepare_deployment(Path(work))
        if unit_id not in {u.id for u in deployment.policy.units}:
            print(f"masb compose setup: the demo policy has no unit {unit_id!r}", file=sys.stderr)
            return 2
        for key_file in sorted(deployment.keys_dir.glob("*.key")):
            record = load_private_key(key_file)
            if record.owner == deployment.policy.router.id:
                place(key_file, out / "router" / key_file.name)
            elif record.owner == unit_id and record.kind == "signing":
                place(key_file, out / "ingest" / "signing.key")
            else:
                place(key_file, out / "parties" / record.owner / key_file.name)
        # The case pseudonym key: the router's copy, and one for every unit (docs/keys.md).
        (pseudonym_file,) = deployment.keys_dir.glob("*.secret")
        place(pseudonym_file, out / "router" / pseudonym_file.name)
        place(pseudonym_file, out / "ingest" / "pseudonym.secret")
        for unit in deployment.policy.units:
            place(pseudonym_file, out / "parties" / unit.id / pseudonym_file.name)
        for secret in sorted((deployment.keys_dir / CASE_KEYS_DIR).glob("*.key")):
            place(secret, out / "router" / CASE_KEYS_DIR / secret.name)
        write_secret(out / "ingest" / "ingest.token", secrets.token_urlsafe(32) + "\n")
        # Written last: its presence says the set-up is complete.
        place(deployment.policy_path, out / "policy" / ".policy.yaml.new", mode=0o644)
    for part in ("router", "ingest", "parties", "policy"):
        owned_by_masb(out / part)
    os.chmod(out / "policy", 0o755)
    os.replace(out / "policy" / ".policy.yaml.new", policy_file)
    print(f"masb compose setup: keys for router, unit {unit_id} (ingest) and every other party, the case "
          "pseudonym key and the case-key secrets written; "
          f"policy version {deployment.policy.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
