"""`masb demo`: the whole path, end to end, in well under a minute, on the embedded broker.

1. start the embedded Tansu broker (or use --bootstrap / MASB_BOOTSTRAP)
2. generate keys for the router, three harm assessment units and the demo agencies; render the
   demo sharing policy (deploy/demo/policy.template.yaml) with their public keys
3. start `masb worker` as a child process
4. publish a scripted scenario (deploy/demo/events/*.json, made fresh: new ids, times), plus one
   garbage record to show that refused input is dead-lettered, not lost
5. each agency decrypts its own feed; the summary shows who got which fields of which event
6. each agency sends a receipt for what it decrypted (recorded in the exchange log)
7. ask for a signed checkpoint, verify the audit log, and show deliveries against their deadlines
Exit 0 only if every expected delivery arrived, decrypted, and the audit log verified.

With --secure the same demo runs on Apache Kafka locked down as in production (docs/security.md):
SASL_SSL with SCRAM-SHA-512, the standard authorizer, certificates and users made on the spot,
ACLs derived from the policy and applied by the admin; the worker, every unit, every agency and
the auditor connect as themselves, and one agency's attempt to read another's feed is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agents.deployment import DEMO_DIR, Deployment, WorkerProcess, prepare_deployment, worker_env
from streams.errors import BrokerUnavailable, CheckFailed, InvalidInput, MasbError
from streams.kafka import IDEMPOTENCE_VARIABLE
from deploy.brokers import TansuBroker, wait_until_ready

ROUTER = "masb-router"


def say(text: str = "") -> None:
    print(text, flush=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def scenario(now: datetime) -> list[dict]:
    """The demo's case events: templates with fresh ids and times (the same script every run)."""
    events = []
    for path in sorted((DEMO_DIR / "events").glob("*.json")):
        event = json.loads(path.read_text())
        header = event["header"]
        header["event_id"] = str(uuid.uuid4())
        header["published_at"] = _iso(now)
        header["occurred_at"] = _iso(now - timedelta(hours=1))
        events.append(event)
    return events


PID_FILE = "demo.pid"  # the demo process using a workdir: a second demo must not wipe it
MARKER_FILE = ".masb-demo-folder"  # made by `masb demo`: the only folders it may empty


def _running_demo(workdir: Path) -> int | None:
    try:
        pid = int((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a process id is reused: only a live `masb demo` counts
        if b"demo" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    except OSError:
        pass  # no /proc: trust the process id
    return pid


def check_worker_settings(bootstrap: str | None) -> None:
    """InvalidInput naming the variable if a MASB_* worker setting in the environment is invalid
    (MASB_PARTITIONS=abc, MASB_ROUTER_BATCH_WINDOW=nan, MASB_WORKER_LOG_LEVEL=bogus): the same checks
    as `masb worker`, made here so that the demo refuses at once instead of its worker failing later.
    The demo's own choices (one partition, one replica) still replace the topology settings."""
    from types import SimpleNamespace

    from agents.settings import DEFAULT_BOOTSTRAP, LOG_LEVELS, Settings, one_of

    one_of(os.environ.get("MASB_WORKER_LOG_LEVEL") or "warn", "MASB_WORKER_LOG_LEVEL", LOG_LEVELS)
    Settings.from_args(SimpleNamespace(bootstrap=bootstrap or DEFAULT_BOOTSTRAP), consistent=False)


def check_workdir(workdir: Path) -> None:
    """InvalidInput unless ``workdir`` may be wiped for a fresh demo: it is absent, empty, or a demo
    folder (it has the marker file or an earlier demo's pid file) that no running demo uses, and it
    is not the current folder or one of its parents."""
    if workdir.exists() and not workdir.is_dir():
        raise InvalidInput(f"--workdir {workdir} is a file; the demo needs a folder of its own there")
    if not workdir.exists():  # the demo makes its folder, never its parents (docs/cli.md)
        if not workdir.parent.is_dir():
            raise InvalidInput(f"--workdir {workdir}: folder {workdir.parent} not found"
                               if not workdir.parent.exists() else f"--workdir {workdir}: {workdir.parent} "
                               "is not a directory")
        if not os.access(workdir.parent, os.W_OK | os.X_OK):
            raise InvalidInput(f"--workdir {workdir}: folder {workdir.parent} is not writable")
        return
    here, target = Path.cwd().resolve(), workdir.resolve()
    if target == here or target in here.parents:
        raise InvalidInput(f"--workdir {workdir} is the current folder or holds it; the demo empties its folder "
                           "first, so give it one of its own (the default is .masb-demo)")
    running = _running_demo(workdir)
    if running is not None:
        raise InvalidInput(f"a demo is already running in {workdir} (process {running}); stop it first, "
                           "or give this one another --workdir")
    is_demo = (workdir / MARKER_FILE).exists() or (workdir / PID_FILE).exists()
    if not is_demo and any(workdir.iterdir()):
        raise InvalidInput(f"--workdir {workdir} is a folder that is not empty and was not made by `masb demo`; "
                           "the demo empties its folder first, so give it a new or empty one")


class DemoWorkerStopped(CheckFailed):
    """The worker of `masb demo --keep` exited while the demo was meant to keep it running (exit 1)."""


class DemoBrokerStopped(BrokerUnavailable):
    """The broker `masb demo --keep` started exited while the demo was meant to keep it running (exit 3)."""

    def __init__(self, bootstrap: str, message: str) -> None:
        MasbError.__init__(self, message)  # the message says it all: no "check --bootstrap" hint
        self.bootstrap = bootstrap


class Identities:
    """Who connects as whom. On the embedded broker (or a Kafka of your own) every client uses the
    environment's settings (None); with --secure each party has its own SCRAM user."""

    def __init__(self, broker=None, properties: dict[str, Path] | None = None) -> None:
        self.broker = broker
        self.properties = properties or {}

    def _user(self, user: str):
        return self.broker.scram_security(user) if self.broker is not None else None

    def unit(self, unit_id: str):
        return self._user(f"masb-unit-{unit_id}")

    def agency(self, agency_id: str):
        return self._user(f"masb-agency-{agency_id}")

    @property
    def auditor(self):
        return self._user("masb-auditor")

    @property
    def operator(self):
        """The cluster admin: reads the dead-letter topic (nobody else may)."""
        return self._user(self.broker.ADMIN) if self.broker is not None else None

    def worker_env(self) -> dict[str, str]:
        """The worker's environment additions: its client properties file (User:masb-router)."""
        return {"MASB_KAFKA_CONFIG": str(self.properties["masb-router"])} if self.broker is not None else {}


async def collect_feeds(bootstrap, topics, policy, keys_dir, expected: dict[str, int], timeout: float,
                        identities: Identities | None = None):
    """Each agency reads and decrypts its own feed until it has what it expects (or time runs out)."""
    from streams.crypto.keys import Keyring
    from streams.partner import PartnerFeed, opener_for

    results: dict[str, list] = {agency: [] for agency in expected}
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for agency, want in expected.items():
            if len(results[agency]) >= want:
                continue
            feed = PartnerFeed(bootstrap, opener_for(agency, Keyring.load_dir(keys_dir, agency), policy), topics,
                               security=identities.agency(agency) if identities else None)
            results[agency] = []
            async for item in feed.items():
                if item.ok:
                    results[agency].append(item.envelope)
                else:
                    problems.append(f"{agency}: offset {item.offset}: {item.error}")
        if all(len(results[a]) >= n for a, n in expected.items()):
            break
        await asyncio.sleep(0.5)
    return results, problems


def run_demo(bootstrap: str | None, workdir: Path, keep: bool = False, secure: bool = False) -> int:
    started = time.monotonic()
    check_worker_settings(bootstrap)  # before any broker starts or any key is made
    check_workdir(workdir)
    try:
        return _run_demo(bootstrap, workdir, started, keep, secure)
    finally:  # the folder is no longer in use (a pid file left behind could name a reused process id)
        with contextlib.suppress(OSError, ValueError):
            if int((workdir / PID_FILE).read_text()) == os.getpid():
                (workdir / PID_FILE).unlink()
                _say_what_is_left(workdir)


# What a finished demo leaves in its folder, and why (anything else is listed by name).
LEFT_BEHIND = {
    "keys": "keys/ (the demo parties' private keys)",
    "policy.yaml": "policy.yaml (the demo policy)",
    "worker.log": "worker.log (the worker's log)",
    "clients": "clients/ (each party's Kafka client settings)",
    "kafka": "kafka/ (the broker's certificates, data and log)",
    "env": "env (settings for the Kafka given with --bootstrap, which still runs)",
}


def _tidy_after_broker(workdir: Path, broker_stopped: bool) -> None:
    """Remove what only made sense while the demo ran: the worker's local state, and the env file
    once the broker it names has been stopped (it would point at a dead broker)."""
    shutil.rmtree(workdir / "worker-data", ignore_errors=True)
    if broker_stopped:
        with contextlib.suppress(FileNotFoundError):
            (workdir / "env").unlink()


def _say_what_is_left(workdir: Path) -> None:
    left = sorted(p.name for p in workdir.iterdir() if p.name not in (MARKER_FILE, PID_FILE))
    if left:
        say(f"left in {workdir} for a look afterwards: " + ", ".join(LEFT_BEHIND.get(n, n) for n in left)
            + "; nothing the demo started still runs, and the next `masb demo` empties the folder")


def _run_demo(bootstrap: str | None, workdir: Path, started: float, keep: bool, secure: bool) -> int:
    if secure:
        return _run_secure(workdir, started, keep)
    broker = None
    try:
        if bootstrap is None:
            broker = TansuBroker()
            broker.start()
            bootstrap = broker.bootstrap
            # Tansu has no idempotent producer: this process, its worker and the --keep settings say so.
            os.environ[IDEMPOTENCE_VARIABLE] = "false"
            say(f"embedded broker (Tansu) started at {bootstrap}")
        else:
            asyncio.run(wait_until_ready(bootstrap, timeout=20))
            say(f"using Kafka at {bootstrap}")
        return _run(bootstrap, _fresh_deployment(workdir), started, keep, Identities(), broker=broker)
    finally:
        if broker is not None:
            broker.cleanup()
        _tidy_after_broker(workdir, broker_stopped=broker is not None)


def _fresh_deployment(workdir: Path) -> Deployment:
    """A new demo deployment in ``workdir``, which run_demo has checked (check_workdir) may be emptied."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()  # its parent exists (check_workdir)
    (workdir / MARKER_FILE).write_text("made by masb demo: a later `masb demo` empties this folder\n")
    (workdir / PID_FILE).write_text(str(os.getpid()))
    deployment = prepare_deployment(workdir)
    say(f"generated keys in {deployment.keys_dir}; policy version {deployment.policy.version} "
        f"with {len(deployment.policy.agencies)} agencies and {len(deployment.policy.agreements)} agreements")
    return deployment


def _run_secure(workdir: Path, started: float, keep: bool) -> int:
    """The demo on a locked-down Apache Kafka: SCRAM users and ACLs for every party of the policy."""
    from agents.app import topic_specs
    from deploy.brokers import SecuredKafkaBroker
    from streams.acl import Principals, plan
    from streams.acl_admin import apply_plan
    from streams.topics import Topics

    deployment = _fresh_deployment(workdir)
    topics, who = Topics(DEMO_PREFIX), Principals()
    planned = plan(deployment.policy, topics, who)
    users = sorted({who.user_name(b.principal) for b in planned})
    broker = SecuredKafkaBroker(users=users, workdir=workdir / "kafka")
    try:
        broker.start()
        say(f"Apache Kafka started at {broker.bootstrap}: SASL_SSL (SCRAM-SHA-512) and mutual TLS at "
            f"{broker.mtls_bootstrap}, standard authorizer, no access without an ACL; CA and certificates in "
            f"{broker.tls_dir}")
        properties = {user: broker.client_properties(user, workdir / "clients") for user in [*users, broker.ADMIN]}
        say(f"{len(users)} SCRAM users, one per party (User:masb-router, User:masb-unit-<id>, "
            f"User:masb-agency-<id>, User:masb-auditor); client settings in {workdir / 'clients'}")
        admin = broker.scram_security(broker.ADMIN)
        applied = asyncio.run(apply_plan(broker.bootstrap, planned, who, topics=topics, policy=deployment.policy,
                                         topic_specs=topic_specs(topics, deployment.policy, 1), security=admin))
        say(f"the admin created the topics and granted {len(applied.diff.missing)} ACLs derived from the policy "
            f"(`masb acl plan`); recorded in {topics.audit}")
        identities = Identities(broker, properties)
        return _run(broker.bootstrap, deployment, started, keep, identities, prefix=DEMO_PREFIX, broker=broker)
    finally:
        broker.cleanup()
        _tidy_after_broker(workdir, broker_stopped=True)


DEMO_PREFIX = "demo."


def _run(bootstrap: str, deployment: Deployment, started: float, keep: bool, identities: Identities,
         prefix: str | None = None, broker=None) -> int:
    from streams.publisher import Publisher
    from streams.crypto.keys import Keyring
    from streams.crypto.pseudonym import PseudonymKeys
    from streams.topics import Topics

    keys_dir, policy = deployment.keys_dir, deployment.policy
    prefix = prefix or f"demo-{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    env = worker_env(deployment, bootstrap, prefix, **identities.worker_env())
    if identities.broker is not None:  # the worker connects as User:masb-router, nothing else
        env = {k: v for k, v in env.items() if not k.startswith("MASB_KAFKA_") or k == "MASB_KAFKA_CONFIG"}
    worker = WorkerProcess(env, deployment.workdir / "worker.log")
    try:
        worker.wait_healthy()
        say(f"worker started (metrics at {worker.url('/metrics')})")
        events = scenario(datetime.now(timezone.utc))

        pseudonyms = PseudonymKeys.load_dir(keys_dir)  # the units' copy of the case pseudonym key

        async def publish() -> None:
            for unit_id in sorted({e["header"]["unit_id"] for e in events}):
                unit_key = Keyring.load_dir(keys_dir, unit_id, kind="signing").current
                async with Publisher(bootstrap, policy, unit_key, topics, pseudonyms=pseudonyms,
                                     security=identities.unit(unit_id)) as publisher:
                    for event in (e for e in events if e["header"]["unit_id"] == unit_id):
                        await publisher.publish(event)
                    if unit_id == events[0]["header"]["unit_id"]:
                        await publisher.send_raw(b"garbage", b"\x00not a publication")

        asyncio.run(publish())
        say(f"published {len(events)} case events and 1 garbage record")

        expected: dict[str, int] = {}
        for event in events:
            for share in policy.routing(event["header"]["event_type"], event["header"]["area"]):
                expected[share.agency_id] = expected.get(share.agency_id, 0) + 1
        received, problems = asyncio.run(collect_feeds(bootstrap, topics, policy, keys_dir, expected, timeout=45,
                                                       identities=identities))
        _print_summary(events, policy, received)
        refused = _dead_letters(bootstrap, topics, identities.operator)
        say(f"dead-letter topic {topics.dead_letter}: {len(refused)} refused record(s), kept with their reasons: "
            + "; ".join(f"{code} ({reason})" for code, reason in refused))

        missing = {a: n - len(received[a]) for a, n in expected.items() if len(received[a]) < n}
        asyncio.run(_send_receipts(bootstrap, topics, policy, keys_dir, received, identities))
        # [ACL change +] policy change + deliveries + one refusal + one receipt per delivery
        entries_expected = (identities.broker is not None) + 1 + sum(expected.values()) + 1 + sum(
            len(v) for v in received.values())
        verified = _verify_audit(bootstrap, topics, policy, worker, entries_expected, identities.auditor)
        denied = _show_a_denial(bootstrap, topics, policy, identities) if identities.broker is not None else True
        elapsed = time.monotonic() - started
        ok = not missing and not problems and verified and len(refused) == 1 and denied
        for agency, n in missing.items():
            say(f"MISSING: {agency} did not receive {n} expected envelope(s)")
        for problem in problems:
            say(f"PROBLEM: {problem}")
        say(f"demo {'completed' if ok else 'FAILED'} in {elapsed:.1f}s")
        if keep:
            return _keep_running(bootstrap, prefix, deployment, worker, identities, env, received,
                                 broker) or (0 if ok else 1)
        else:
            say("to keep exploring: `masb demo --keep` leaves the broker and the worker running and prints "
                "the settings that make every other masb command work against them")
        return 0 if ok else 1
    finally:
        worker.stop()


# The demo's topology: a second `masb worker` started from the env file must agree with it.
TOPOLOGY_SETTINGS = ("MASB_PARTITIONS", "MASB_REPLICATION_FACTOR", "MASB_MIN_INSYNC_REPLICAS")


def _keep_running(bootstrap: str, prefix: str, deployment, worker, identities: Identities, worker_settings: dict,
                  received: dict, broker=None) -> int | None:
    """Leave the broker and the worker running until Ctrl-C (then KeyboardInterrupt: exit 130) or
    SIGTERM (exit 143), with settings every command can use. The worker stopping by itself ends the
    demo with a message and exit 1; the broker the demo started (``broker``, None for --bootstrap)
    stopping by itself, with exit 3."""
    settings = {"MASB_BOOTSTRAP": bootstrap, "MASB_TOPIC_PREFIX": prefix,
                "MASB_POLICY": str(deployment.policy_path.resolve()), "MASB_KEYS_DIR": str(deployment.keys_dir.resolve())}
    settings.update({k: worker_settings[k] for k in TOPOLOGY_SETTINGS if k in worker_settings})
    if os.environ.get(IDEMPOTENCE_VARIABLE):
        settings[IDEMPOTENCE_VARIABLE] = os.environ[IDEMPOTENCE_VARIABLE]
    as_agency = ""
    if identities.broker is not None:  # the auditor's identity by default; an agency's for consume
        settings["MASB_KAFKA_CONFIG"] = str(identities.properties["masb-auditor"].resolve())
    env_file = deployment.workdir / "env"
    env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in settings.items()))
    # An agency that received something, so that the suggested `consume` shows envelopes.
    agency = max(sorted(received), key=lambda a: len(received[a]), default=deployment.policy.agencies[0].id)
    if identities.broker is not None:
        as_agency = f"MASB_KAFKA_CONFIG={identities.properties[f'masb-agency-{agency}'].resolve()} "
    key = next(deployment.keys_dir.glob(f"{agency}.exchange.*.key"), None)
    say("")
    say("The broker and the worker keep running until you press Ctrl-C. In another terminal:")
    say(f"  source {env_file}")
    say(f"  {as_agency}masb consume --agency {agency} --key {key}        # what {agency} received, decrypted")
    say("  masb audit verify                                   # replay the exchange log against its checkpoints")
    say("  masb audit report --format html --out report.html   # who received what, when, and why")
    say("  masb policy explain $MASB_POLICY MARAC_REFERRAL worcestershire")
    say(f"worker metrics: {worker.url('/metrics')}")
    if identities.broker is None:
        say("(the embedded broker serves one worker: try a second `masb worker` on Apache Kafka, docs/operations.md)")
    # The broker first: when it goes, the worker only waits for it (and may stop too, later).
    watched = [("broker", broker.process)] if broker is not None and broker.process is not None else []
    watched.append(("worker", worker.proc))
    try:
        while (ended := next(((role, proc) for role, proc in watched if proc.poll() is not None), None)) is None:
            time.sleep(1)  # poll() also reaps a process that ended: no zombie is left
    except BaseException:  # Ctrl-C, or SIGTERM (agents/cli raises for it): stop both, exit 130 or 143
        say("stopping the worker and the broker")
        raise
    role, proc = ended
    if role == "broker":
        raise DemoBrokerStopped(bootstrap, f"the demo's broker (process {proc.pid}) ended ({_how_it_ended(proc)}); "
                                "stopping the demo")
    raise DemoWorkerStopped(f"the demo's worker (process {proc.pid}) ended ({_how_it_ended(proc)}); stopping the "
                            f"demo; its log: {deployment.workdir / 'worker.log'}")


def _how_it_ended(proc: subprocess.Popen) -> str:
    code = proc.returncode
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit {code}"


def _print_summary(events, policy, received) -> None:
    from streams.policy import legal_basis_label

    say("")
    say("Who received what (fields decrypted by each agency with its own key):")
    by_event: dict[str, list] = {}
    for agency, envelopes in received.items():
        for env in envelopes:
            by_event.setdefault(env.event_id, []).append((agency, env))
    for event in events:
        header = event["header"]
        say(f"- {header['event_type']} case {header['case_ref']} ({header['area']}, risk {header['risk_level']}) "
            f"from {header['unit_id']}")
        got = sorted(by_event.get(header["event_id"], []), key=lambda pair: pair[0])
        for agency, env in got:
            say(f"    -> {agency:<24} {env.agreement_id} v{env.agreement_version}: {', '.join(sorted(env.fields))}")
            say(f"       {'':<24} legal basis: {legal_basis_label(env.legal_basis)} ({env.legal_basis})")
        receivers = {a for a, _ in got}
        covering = sorted(a.id for a in policy.agencies if header["area"] in a.areas and a.id not in receivers)
        if covering:
            say(f"    (nothing for {', '.join(covering)}: no agreement covers this event type)")
    say("")


def _dead_letters(bootstrap, topics, security=None) -> list[tuple[str, str]]:
    from streams.kafka import read_topic
    from streams.routing import decode_dead_letter

    async def read() -> list[tuple[str, str]]:
        letters = [decode_dead_letter(r.value) async for r in read_topic(bootstrap, topics.dead_letter,
                                                                         security=security)]
        return [(letter["reason_code"], letter["reason"]) for letter in letters]

    return asyncio.run(read())


async def _send_receipts(bootstrap, topics, policy, keys_dir, received, identities: Identities) -> None:
    """Every agency tells the exchange log it received what it decrypted (docs/receipts.md)."""
    from streams.crypto.keys import Keyring
    from streams.partner import ReceiptSender

    for agency, envelopes in received.items():
        agency_key = Keyring.load_dir(keys_dir, agency).current
        async with ReceiptSender(bootstrap, policy, agency_key, topics, security=identities.agency(agency)) as receipts:
            for envelope in envelopes:
                await receipts.send(envelope, "RECEIVED")


def _show_a_denial(bootstrap, topics, policy, identities: Identities) -> bool:
    """One agency tries to read another's feed: the broker refuses it (what ACLs are for)."""
    from streams.errors import AccessDenied
    from streams.kafka import read_topic

    reader, victim = policy.agencies[0].id, policy.agencies[1].id

    async def read() -> None:
        async for _ in read_topic(bootstrap, topics.partner(victim), security=identities.agency(reader)):
            pass

    try:
        asyncio.run(read())
    except AccessDenied as exc:
        say(f"{reader} tried to read {victim}'s feed: {exc}")
        return True
    say(f"PROBLEM: {reader} could read {victim}'s feed")
    return False


def _verify_audit(bootstrap, topics, policy, worker, entries_expected: int, security=None) -> bool:
    from streams.audit.report import Filters, build_report
    from streams.audit.verify import verify_log
    from streams.auditing import DEFAULT_ORIGIN, checkpoint_verifiers, read_log

    verifiers = checkpoint_verifiers(policy, DEFAULT_ORIGIN)
    deadline = time.monotonic() + 20
    report = None
    while time.monotonic() < deadline:
        worker.request_checkpoint()
        snapshot = asyncio.run(read_log(bootstrap, topics, security=security))
        report = verify_log(snapshot.entries, snapshot.checkpoints, verifiers, DEFAULT_ORIGIN)
        if len(snapshot.entries) >= entries_expected and report.ok and report.uncovered_entries == 0:
            say(f"audit log: {report.entries} entries, {report.checkpoints_checked} signed checkpoints, "
                f"verified intact (RFC 9162 tree, Ed25519 checkpoints)")
            deadlines = build_report(snapshot.entries, Filters()).summary()["deadlines"]
            say("deliveries against their agreed deadlines, from the agencies' receipts: "
                + ", ".join(f"{n} {status}" for status, n in deadlines.items() if n))
            return True
        time.sleep(0.5)
    say(f"audit log NOT verified: {report.problems if report else 'no report'}")
    return False
