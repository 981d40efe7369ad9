"""Hot reload of the sharing policy: a changed, valid policy file applies from the next event.

The swap happens between two events (the router reads runtime.router once per event), so no
event is routed half under one version and half under another, and none is lost or repeated.
Every change is recorded in the audit log as a POLICY_CHANGE entry; a file that fails the checks
is refused and the version in force stays. A file that cannot be read (missing, a directory, a
dangling link, no permission) is one log line and one counted failed reload per problem, never a
crash of the watcher; it is read again as soon as it can be.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from pathlib import Path

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
            await check_policy_file(runtime, sender, path)
    finally:
        await sender.stop()


async def check_policy_file(runtime, sender: AcknowledgedSender, path: Path) -> None:
    """One poll: reload the file if it changed; a file that cannot be read is one failed reload."""
    signature, problem = file_signature(path)
    if problem is not None:
        unreadable(runtime, path, problem)
        return
    if signature != runtime.policy_mtime:
        runtime.policy_mtime = signature
        await reload(runtime, sender, path)


def file_signature(path: Path) -> tuple[tuple | None, str | None]:
    """(what identifies this version of the file, None), or (None, why it cannot be read). The
    signature changes on a write, a replacement (mv) and a change of permissions (ctime), so that a
    file made readable again is read again."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None, ("is a symbolic link to a file that does not exist" if path.is_symlink() else "is missing")
    except OSError as exc:  # a loop of links, a parent that is a file or may not be searched
        return None, f"cannot be read ({_reason(exc)})"
    if stat.S_ISDIR(status.st_mode):
        return None, "is a directory"
    if not stat.S_ISREG(status.st_mode):  # a FIFO or a device: reading it could block the watcher
        return None, "is not a regular file"
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns), None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__  # "Permission denied": never the file's contents


def unreadable(runtime, path: Path, problem: str) -> None:
    """Log and count a policy file that cannot be read, once per problem (the watcher polls every
    few seconds), and read it again at the next poll."""
    if problem != getattr(runtime, "policy_problem", None):
        runtime.policy_problem = problem
        metrics.POLICY_RELOAD_FAILURES.inc()
        log.error("policy file %s %s; keeping version %d", path, problem, runtime.policy.version)
    runtime.policy_mtime = None


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
    except OSError as exc:  # replaced or made unreadable between the check and the read
        unreadable(runtime, path, f"cannot be read ({_reason(exc)})")
        return
    except PolicyError as exc:
        runtime.policy_problem = None
        metrics.POLICY_RELOAD_FAILURES.inc()
        log.error("policy file refused, keeping version %d: %s", runtime.policy.version, exc)
        return
    runtime.policy_problem = None
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
