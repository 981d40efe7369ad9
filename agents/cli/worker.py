"""`masb worker`: run the Faust worker (router, receipts, checkpointer, policy reload, web)."""

from __future__ import annotations

import asyncio
import logging
import socket

from agents.cli.common import UsageError, existing_dir, kafka_flags, load_policy_file, port_number, positive
from agents.settings import LOG_LEVELS


def register(sub) -> None:
    p = sub.add_parser("worker", help="run the Faust worker (router, checkpointer, policy reload)")
    kafka_flags(p)
    p.add_argument("--policy", help="sharing policy YAML (env MASB_POLICY)")
    p.add_argument("--keys-dir", help="directory of the router's private key files (env MASB_KEYS_DIR)")
    p.add_argument("--web-port", type=port_number, help="port of /metrics and /health (env MASB_WEB_PORT, default 6066)")
    p.add_argument("--datadir", help="Faust data directory (env MASB_DATADIR)")
    p.add_argument("--checkpoint-interval", type=positive(float), help="seconds between audit checkpoints")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="warn")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args) -> int:
    from agents.app import Runtime, build_app, worker_topic_specs
    from agents.settings import Settings
    from streams.kafka import ensure_topics

    from agents.worker import MasbWorker, limit_malloc_arenas

    limit_malloc_arenas()
    settings = Settings.from_args(args)
    policy = load_policy_file(settings.policy_path)
    existing_dir(settings.keys_dir, "keys directory")
    _check_port_free(settings.web_host, settings.web_port)
    runtime = Runtime(settings, policy)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Before the worker's own logging is set up: an unreachable broker is reported once, by the CLI,
    # not also by aiokafka's connection errors on the console.
    client_log = logging.getLogger("aiokafka")
    level, client_log.level = client_log.level, logging.CRITICAL
    try:
        loop.run_until_complete(ensure_topics(settings.bootstrap,
                                              worker_topic_specs(settings, runtime.topics, runtime.policy)))
    finally:
        client_log.setLevel(level)
    app = build_app(settings, runtime)
    worker = MasbWorker(app, loop=loop, loglevel=settings.log_level, quiet=True,
                        stop_deadline=settings.stop_deadline, supervisor=runtime.supervisor)
    worker.execute_from_commandline()
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Say so at once if the web port is taken or the host is not this machine's, rather than after
    the worker has joined its group; the hint names the setting at fault."""
    import errno

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            host_wrong = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            hint = ("set MASB_WEB_HOST to an address of this host (default 127.0.0.1; 0.0.0.0: all)" if host_wrong
                    else "choose another --web-port (env MASB_WEB_PORT)")
            raise UsageError(f"cannot serve /health and /metrics on {host}:{port}: {exc.strerror}",
                             hint=hint) from None
