"""Hot reload of the sharing policy: a changed, valid policy file applies from the next event.

The swap happens between two events (the router reads runtime.router once per event), so no
event is routed half under one version and half under another, and none is lost or repeated.
Every change is recorded in the audit log as a POLICY_CHANGE entry; a file that fails the checks
is refused and the version in force stays.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from agents import metrics
from agents.sending import AcknowledgedSender, Message
from streams.errors import MasbError
from streams.kafka import ensure_topics
from streams.crypto.keys import KeyFileError
from streams.policy import PolicyError, load_policy
from streams.routing import Router

log = logging.getLogger("masb.policy")


def install(app: faust.App, runtime) -> None:
    runtime.supervisor.run("policy-watch", lambda: watch_policy(runtime))


async def watch_policy(runtime) -> None:
    """Record the policy in force, then apply each valid change of the file (a supervised task)."""
    path = runtime.settings.policy_path
    sender = AcknowledgedSender(runtime.settings.bootstrap)
    await sender.start()
    try:
        if not getattr(runtime, "initial_policy_recorded", False):
            await record_change(runtime, sender, None)
            runtime.initial_policy_recorded = True
        while True:
            await asyncio.sleep(runtime.settings.policy_poll_interval)
            try:
                current = path.stat().st_mtime_ns
            except FileNotFoundError:
                if runtime.policy_mtime is not None:
                    log.error("policy file %s is missing; keeping version %d", path, runtime.policy.version)
                runtime.policy_mtime = None
                continue
            if current != runtime.policy_mtime:
                runtime.policy_mtime = current
                await reload(runtime, sender, path)
    finally:
        await sender.stop()


async def record_change(runtime, sender: AcknowledgedSender, previous) -> None:
    entry = runtime.router.policy_change(previous)
    await sender.send_all([Message(runtime.topics.audit, None, entry)], _never_refused)
    metrics.AUDIT_ENTRIES.labels("POLICY_CHANGE").inc()
    metrics.POLICY_VERSION.set(runtime.policy.version)


def _never_refused(message: Message, error: Exception) -> list[Message]:
    raise RuntimeError(f"the broker refused a {len(message.value)}-byte audit entry ({type(error).__name__})")


async def reload(runtime, sender: AcknowledgedSender, path) -> None:
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, load_policy, path)
    except PolicyError as exc:
        metrics.POLICY_RELOAD_FAILURES.inc()
        log.error("policy file refused, keeping version %d: %s", runtime.policy.version, exc)
        return
    if new.digest == runtime.policy.digest:
        return
    from agents.app import load_identity, worker_topic_specs

    # A router key rotation reaches this worker with the policy: the new key files must be in its
    # keys directory already (deployed to every worker host before the policy).
    try:
        identity = load_identity(new, runtime.settings.keys_dir, runtime.case_keys)
    except (KeyFileError, OSError) as exc:
        metrics.POLICY_RELOAD_FAILURES.inc()
        log.error("policy version %d refused, keeping version %d: %s", new.version, runtime.policy.version,
                  getattr(exc, "args", [type(exc).__name__])[0])
        return
    # New agencies need their feed before the first envelope is sent to them.
    try:
        await ensure_topics(runtime.settings.bootstrap, worker_topic_specs(runtime, runtime.topics, new))
    except MasbError as exc:  # e.g. a new agency's feed, on a cluster where only the admin creates topics
        metrics.POLICY_RELOAD_FAILURES.inc()
        log.error("policy version %d not put in force, keeping version %d: %s (tried again every %.0fs; on a "
                  "locked-down cluster run `masb acl apply` with the new policy)", new.version,
                  runtime.policy.version, exc, runtime.settings.policy_poll_interval)
        runtime.policy_mtime = None  # try again at the next poll
        return
    previous = runtime.policy
    runtime.policy = new
    runtime.identity = identity
    runtime.router = Router(new, identity, runtime.topics, clock=runtime.clock)
    await record_change(runtime, sender, previous)
    log.warning("policy version %d now in force (was %d)", new.version, previous.version)
