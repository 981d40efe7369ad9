"""The worker process: faust's Worker with a bounded shutdown, a quiet log, and honest exit codes.

- SIGTERM or SIGINT: faust stops taking records, the agents abandon a batch the broker has not
  acknowledged (its offsets stay uncommitted: it is routed again after the restart) and close their
  producers without waiting for an absent broker. If anything still holds the process after
  ``stop_deadline`` seconds (default 10), it exits anyway: nothing unacknowledged was committed,
  so nothing is lost (docs/operations.md, "Stopping").
- The log is plain lines when it is not a terminal (no spinner), and a client library's repeated
  messages are held back (agents/logs.py).
- glibc's malloc gets at most two arenas (unless MALLOC_ARENA_MAX says otherwise): by default
  each thread that allocates (faust's consumer thread, RocksDB's) may get its own, and their
  fragmentation grew a worker's memory by 8 % over 80,000 events (bench/bench_soak.py).
- Exit code 1 when the supervisor stopped the worker because a task kept failing, so that systemd
  or Kubernetes restarts it; 0 after a requested stop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

import faust

from agents.logs import install_repeat_filter

log = logging.getLogger("masb.worker")


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas() -> bool:
    """Cap glibc's malloc arenas at MALLOC_ARENAS, before the worker starts threads; False where the
    C library is not glibc or MALLOC_ARENA_MAX is set (then glibc reads that itself)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, MALLOC_ARENAS))


class MasbWorker(faust.Worker):
    def __init__(self, *args, stop_deadline: float = 10.0, supervisor=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_deadline = stop_deadline
        self.supervisor = supervisor
        self._deadline: threading.Timer | None = None
        if not self.stdout.isatty():
            self.spinner = None

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        install_repeat_filter(logger)

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            # A thread, not the event loop: it must fire even if the loop is stuck in a client.
            self._deadline = threading.Timer(self.stop_deadline, self._exit_now)
            self._deadline.daemon = True
            self._deadline.start()

    def _exit_now(self) -> None:
        log.error("shutdown took longer than %.0fs; exiting now (unacknowledged input is not committed and is "
                  "routed again after the restart)", self.stop_deadline)
        logging.shutdown()
        os._exit(self._exit_code())

    def _exit_code(self) -> int:
        code = getattr(self.supervisor, "exit_code", None)
        return code if code is not None else 0

    def _on_sigterm(self) -> None:
        self._arm_deadline()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline()
        super()._on_sigint()

    def execute_from_commandline(self):
        try:
            super().execute_from_commandline()
        except SystemExit as exc:
            code = self._exit_code()
            raise SystemExit(code if code else exc.code) from None
