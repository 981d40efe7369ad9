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
from streams.kafka import ensure_topics
from streams.policy import PolicyError, load_policy
from streams.routing import Router

log = logging.getLogger("masb.policy")


def install(app: faust.App, runtime) -> None:
    path = runtime.settings.policy_path
    state = {"mtime": path.stat().st_mtime_ns}
    audit_topic = app.topic(runtime.topics.audit, key_serializer="raw", value_serializer="raw")

    async def record_change(previous) -> None:
        fut = await audit_topic.send(value=runtime.router.policy_change(previous))
        await fut
        metrics.AUDIT_ENTRIES.labels("POLICY_CHANGE").inc()
        metrics.POLICY_VERSION.set(runtime.policy.version)

    @app.task
    async def record_initial_policy() -> None:
        await record_change(None)

    @app.timer(runtime.settings.policy_poll_interval)
    async def reload_policy() -> None:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            log.error("policy file %s is missing; keeping version %d", path, runtime.policy.version)
            return
        if mtime == state["mtime"]:
            return
        state["mtime"] = mtime
        try:
            new = await asyncio.get_running_loop().run_in_executor(None, load_policy, path)
        except PolicyError as exc:
            metrics.POLICY_RELOAD_FAILURES.inc()
            log.error("policy file refused, keeping version %d: %s", runtime.policy.version, exc)
            return
        if new.digest == runtime.policy.digest:
            return
        # New agencies need their feed before the first envelope is sent to them.
        from agents.app import topic_specs

        await ensure_topics(runtime.settings.bootstrap, topic_specs(runtime.topics, new, runtime.settings.partitions))
        previous = runtime.policy
        runtime.policy = new
        runtime.router = Router(new, runtime.identity, runtime.topics)
        await record_change(previous)
        log.warning("policy version %d now in force (was %d)", new.version, previous.version)
