"""`masb witness`: run a witness of the exchange log (C2SP tlog-witness; docs/operations.md).

    keygen --name NAME --out FILE       a new cosigner key (0600); prints the verifier key for the policy
    serve --key FILE --state-dir DIR    the HTTP witness; trusts the log keys of --policy, or --log-key
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agents.cli.common import port_or_zero, positive


def register(sub) -> None:
    p = sub.add_parser("witness", help="run a witness that cosigns the exchange log's checkpoints (C2SP tlog-witness)")
    wsub = p.add_subparsers(dest="action", required=True)

    q = wsub.add_parser("keygen", help="create the witness's Ed25519 cosigner key; print its verifier key")
    q.add_argument("--name", required=True, help="cosigner name, a schema-less URL such as witness.example.org/masb")
    q.add_argument("--out", required=True, help="private key file to create (mode 0600; never overwritten)")

    q = wsub.add_parser("serve", help="serve POST /add-checkpoint and GET /<origin hash>/checkpoint")
    q.add_argument("--key", required=True, help="the cosigner key file written by `masb witness keygen`")
    q.add_argument("--state-dir", required=True, help="directory of the witness's state and evidence")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    q.add_argument("--port", type=port_or_zero, default=7380, help="port (default 7380; 0 picks a free one)")
    q.add_argument("--policy", help="sharing policy YAML: trust the router's signing keys (env MASB_POLICY)")
    q.add_argument("--origin", help="the log's origin with --policy (env MASB_LOG_ORIGIN)")
    q.add_argument("--request-timeout", type=positive(float, maximum=3600), default=20.0, metavar="SECONDS",
                   help="longest wait for a request's headers, and again for its body (default 20): "
                        "then 408 or the connection is closed")
    q.add_argument("--log-key", action="append", default=[], metavar="VKEY",
                   help="a log's C2SP verifier key (its name is the log's origin); repeatable, instead of --policy")
    p.set_defaults(func=cmd_witness)


def cmd_witness(args) -> int:
    if args.action == "keygen":
        return _keygen(args)
    return _serve(args)


def _keygen(args) -> int:
    from agents.cli.common import UsageError, output_file
    from streams.audit.checkpoint import CheckpointError
    from streams.audit.cosignature import cosigner_signer_key, generate_cosigner

    try:
        signer = generate_cosigner(args.name)
    except CheckpointError as exc:
        raise UsageError(f"--name: {exc}") from None
    output_file(args.out, "--out")  # first: a directory is named as one, not as an existing key
    if os.path.lexists(args.out):
        raise UsageError(f"{args.out} already exists; refusing to overwrite a key")
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{args.out} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(cosigner_signer_key(signer.name, signer.signing_key) + "\n")
    print(signer.key_string())
    print(f"masb: key written to {args.out}; put the verifier key above in the policy's witnesses "
          "(docs/policy.md)", file=sys.stderr)
    return 0


def _trusted_logs(args) -> dict:
    from agents.cli.common import UsageError, load_policy
    from agents.settings import env_or
    from streams.audit.checkpoint import CheckpointError, parse_verifier_key
    from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers

    logs: dict[str, list] = {}
    try:
        for vkey in args.log_key:
            verifier = parse_verifier_key(vkey)
            logs.setdefault(verifier.name, []).append(verifier)
    except CheckpointError as exc:
        raise UsageError(f"--log-key: {exc}") from None
    if args.policy or not logs:
        origin = env_or(args.origin, "MASB_LOG_ORIGIN", DEFAULT_ORIGIN)
        logs.setdefault(origin, []).extend(parse_verifier_key(k) for k in checkpoint_verifiers(load_policy(args), origin))
    return logs


def _serve(args) -> int:
    from aiohttp import web

    from agents.cli.common import UsageError, existing_file, output_dir
    from streams.audit.checkpoint import CheckpointError
    from streams.audit.cosignature import parse_cosigner_signer_key
    from streams.witness.http import build_witness_runner
    from streams.witness.service import WitnessService
    from streams.witness.state import WitnessState, WitnessStateError

    try:
        signer = parse_cosigner_signer_key(existing_file(args.key, "witness key file").read_text(encoding="ascii"))
    except (UnicodeDecodeError, CheckpointError) as exc:
        raise UsageError(f"cannot use the witness key {args.key}: {exc}") from None
    if Path(args.key).stat().st_mode & 0o077:
        print(f"masb: warning: {args.key} is readable by others; chmod 600 it", file=sys.stderr)
    logs = _trusted_logs(args)
    output_dir(args.state_dir, "--state-dir")  # created if missing, never its parents (docs/cli.md)
    try:
        state = WitnessState(args.state_dir)
    except WitnessStateError as exc:
        raise UsageError(str(exc)) from None
    logging.getLogger("masb.witness").setLevel(logging.INFO)  # every cosignature and refusal, no personal data
    service = WitnessService(signer, logs, state)

    # A service, like `ingest` (docs/cli.md): SIGTERM from its service manager is a clean stop, exit 0;
    # Ctrl-C stops it just as cleanly, then exits 130 like every long command.
    stopped_by: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # until the server runs

    async def run() -> None:
        runner = build_witness_runner(service, args.request_timeout, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, args.host, args.port)
            try:
                await site.start()
            except OSError as exc:  # the port is taken or the address is not this host's
                raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda sig=sig: (stopped_by.append(sig), stop.set()))
            port = site._server.sockets[0].getsockname()[1]
            print(f"masb witness: listening on http://{args.host}:{port} as {signer.key_string()} "
                  f"for {', '.join(sorted(logs))}", flush=True)
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    finally:
        state.close()
    if stopped_by[:1] == [signal.SIGINT]:
        raise KeyboardInterrupt  # stopped cleanly; Ctrl-C is exit 130 (docs/cli.md)
    return 0
