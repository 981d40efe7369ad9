"""One-shot set-up of the compose demo (deploy/compose/compose.yaml, service `setup`).

Runs inside the masb image: generates a private key for every party of the packaged demo policy
template (`masb keys generate` for each, via agents.deployment.prepare_deployment), renders the
policy with their public keys, and sorts the private keys into one volume per holder, so that each
service mounts, read-only, only what it must hold:

    OUT/policy/policy.yaml              the sharing policy (public keys only), for everyone
    OUT/router/*.key                    the router's signing and exchange keys: the workers
    OUT/ingest/signing.key              the signing key of the unit the ingest serves
    OUT/ingest/ingest.token             the bearer token its case system presents
    OUT/parties/<owner>/*.key           every other unit's and agency's keys, for trying
                                        `masb publish` and `masb consume` with `docker compose run`

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
        write_secret(out / "ingest" / "ingest.token", secrets.token_urlsafe(32) + "\n")
        # Written last: its presence says the set-up is complete.
        place(deployment.policy_path, out / "policy" / ".policy.yaml.new", mode=0o644)
    for part in ("router", "ingest", "parties", "policy"):
        owned_by_masb(out / part)
    os.chmod(out / "policy", 0o755)
    os.replace(out / "policy" / ".policy.yaml.new", policy_file)
    print(f"masb compose setup: keys for router, unit {unit_id} (ingest) and every other party written; "
          f"policy version {deployment.policy.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
