"""`masb ingest`: serve the HTTP ingest (streams/ingest.py) for one harm assessment unit."""

from __future__ import annotations

import logging
import signal
import sys

from agents.cli.common import (
    UsageError,
    bootstrap,
    existing_file,
    given,
    kafka_flags,
    load_policy,
    port_number,
    positive,
    pseudonym_flag,
    pseudonym_keys,
    topics,
)
from agents.logs import install_repeat_filter
from streams.errors import shown


def register(sub) -> None:
    p = sub.add_parser("ingest", help="serve POST /events for a unit's case system (validate, sign, seal, produce)")
    kafka_flags(p)
    p.add_argument("--as", dest="unit", required=True, help="the harm assessment unit id")
    p.add_argument("--key", required=True, help="the unit's private signing key file (never leaves the unit)")
    p.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    pseudonym_flag(p)
    p.add_argument("--keys-dir", help="directory holding the case pseudonym key if --pseudonym-key is not given")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: the case system's host)")
    p.add_argument("--port", type=port_number, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--token-file", help="file holding a bearer token that requests must present")
    p.add_argument("--max-body-bytes", type=positive(int), default=None, help="largest request body (default 1 MiB)")
    p.add_argument("--send-timeout", type=positive(float, maximum=3600), default=None,
                   help="seconds to wait for Kafka's acknowledgement before answering 503 (default 10; at most 3600)")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args) -> int:
    from aiohttp import web

    from streams.crypto.keys import load_private_key
    from streams.ingest import (
        DEFAULT_SEND_TIMEOUT,
        MAX_BODY_BYTES,
        IngestService,
        build_ingest_app,
    )

    given(args.unit, "--as", "the publishing unit's id")
    policy = load_policy(args)
    unit_key = load_private_key(existing_file(args.key, "key file"))
    if unit_key.owner != args.unit or unit_key.kind != "signing":
        raise UsageError(f"the key given is not a signing key of unit {shown(args.unit)}")
    token = None
    if args.token_file:
        token = existing_file(args.token_file, "token file").read_text(encoding="utf-8").strip()
        if not token:
            raise UsageError(f"token file {args.token_file} is empty")
    service = IngestService(
        bootstrap(args), policy, unit_key, topics(args), pseudonyms=pseudonym_keys(args),
        send_timeout=args.send_timeout or DEFAULT_SEND_TIMEOUT, token=token,
        max_body_bytes=args.max_body_bytes or MAX_BODY_BYTES,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The worker's log style (agents/logs.py): a client library's line is one line, its repeats are
    # held back; the ingest itself says once when Kafka is lost and once when it is back.
    install_repeat_filter(logging.getLogger())
    app = build_ingest_app(service)

    def listening(_aiohttp_banner: str) -> None:  # aiohttp calls it once the port is bound
        print(f"masb ingest: unit {service.unit_id}, policy version {policy.version}, "
              f"POST http://{args.host}:{args.port}/events", file=sys.stderr, flush=True)

    stopped_by: list[int] = []
    app.on_startup.append(lambda app: _stop_on_signals(stopped_by))
    signal.signal(signal.SIGINT, lambda signum, frame: _interrupted(stopped_by))  # until the server runs
    try:
        web.run_app(app, host=args.host, port=args.port, print=listening, access_log=None, handle_signals=False)
    except OSError as exc:  # the port is taken or the address is not this host's
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    if stopped_by == [signal.SIGINT]:
        raise KeyboardInterrupt  # stopped cleanly; Ctrl-C is exit 130 like every long command (docs/cli.md)
    return 0  # SIGTERM: how a service manager stops it, a normal end


def _interrupted(stopped_by: list[int]) -> None:
    stopped_by.append(signal.SIGINT)
    raise KeyboardInterrupt


async def _stop_on_signals(stopped_by: list[int]) -> None:
    """SIGINT or SIGTERM: stop serving and close the Kafka producer (aiohttp's graceful exit),
    remembering which signal it was."""
    import asyncio

    from aiohttp.web_runner import GracefulExit

    def stop(signum: int) -> None:
        if not stopped_by:
            stopped_by.append(signum)
        raise GracefulExit()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
