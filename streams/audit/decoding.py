"""Many audit entries decoded in log order, in worker processes when the log is large.

Decoding (fastavro, streams/audit/entry.py) is most of what a report costs per entry, and every
entry decodes on its own: on a machine with more than one core a large log is cut into chunks that
worker processes decode while this process builds the report from the chunks already back. Each
entry is decoded by ``decode_entry`` exactly as it is one at a time; only where it runs changes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .entry import AuditEntryError, decode_entry

PARALLEL_FROM = 50_000  # entries; below this the pool's start and hand-over cost more than they save
MAX_WORKERS = 8
MAX_REQUESTED = 256  # the most processes a caller may ask for (MASB_REPORT_WORKERS); more is a mistake
CHUNK = 2048  # entries per task: a few ms of work, so the results stream back as the report is built


def _fork():
    """The fork start method if this process may safely fork now, else None. Forked workers start
    at once and need no re-import of the caller's main module (spawn would run an unguarded script
    again); fork is only safe with no other thread running (a thread's held lock would stay held)."""
    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return None
    return multiprocessing.get_context("fork")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(entries: int) -> int:
    """How many processes decode ``entries`` entries: for a log of PARALLEL_FROM entries or more,
    one per core this process may use but one (left to this process, which builds the report from
    what they decode; at most MAX_WORKERS); else, and on 2 cores or fewer, 1 (decode here). On 2
    cores a worker costs more CPU (pickling both ways) than it saves time (bench_audit_commands.py)."""
    if entries < PARALLEL_FROM or _fork() is None:
        return 1
    workers = min(MAX_WORKERS, _cores() - 1)
    return workers if workers >= 2 else 1


def usable_workers(requested: int, entries: int) -> int:
    """The processes that decode ``entries`` entries when ``requested`` are asked for: never more
    than the cores this process may use, nor than the chunks there are to decode (a log of one
    chunk is decoded here: a pool would only add its start)."""
    chunks = -(-entries // CHUNK)
    return max(1, min(requested, _cores(), chunks))


def _worker_signals() -> None:
    """In each decoding process: Ctrl-C is for the command, which stops the pool (a worker that
    took it too would print its own KeyboardInterrupt traceback); SIGTERM ends it at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the workers are forked (they inherit the mask and set
    their own handlers first); one that came meanwhile is delivered here just after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _decode_chunk(datas: list[bytes]) -> list[dict[str, Any] | str]:
    """Each entry decoded, or the message of the AuditEntryError it raised (errors cross the
    process boundary as their message: nothing of the entry is in it)."""
    out: list[dict[str, Any] | str] = []
    for data in datas:
        try:
            out.append(decode_entry(data))
        except AuditEntryError as exc:
            out.append(str(exc))
    return out


def decode_entries(datas: Sequence[bytes], workers: int | None = None) -> Iterator[dict[str, Any] | AuditEntryError]:
    """The decoded entry for each of ``datas``, in order, or the AuditEntryError it raised (not
    raised here: the caller says which entry). ``workers``: processes to decode in (None: see
    default_workers; at most usable_workers; 1, or where this process cannot fork safely: decode in
    this process)."""
    if workers is None:
        workers = default_workers(len(datas))
    workers = usable_workers(workers, len(datas))
    context = _fork() if workers > 1 else None
    if context is None:
        for data in datas:
            try:
                yield decode_entry(data)
            except AuditEntryError as exc:
                yield exc
        return
    chunks = (list(datas[i:i + CHUNK]) for i in range(0, len(datas), CHUNK))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_signals)
    try:
        pending = deque()
        with _signals_held():  # the first submit forks every worker (the fork context starts them all)
            pending.append(pool.submit(_decode_chunk, next(chunks)))
        while len(pending) < 2 * workers:  # a bounded window: decoded chunks never pile up faster than used
            chunk = next(chunks, None)
            if chunk is None:
                break
            pending.append(pool.submit(_decode_chunk, chunk))
        while pending:
            decoded = pending.popleft().result()
            following = next(chunks, None)
            if following is not None:
                pending.append(pool.submit(_decode_chunk, following))
            for item in decoded:
                yield AuditEntryError(item) if isinstance(item, str) else item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
