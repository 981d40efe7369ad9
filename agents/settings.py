"""Worker settings: flags first, then MASB_* environment variables, then defaults."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import InvalidInput, shown

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
LOG_LEVELS = ("crit", "error", "warn", "info", "debug")  # `masb worker --log-level` (MASB_WORKER_LOG_LEVEL in the demo)
# ASCII decimal only: int() and float() also take "６０６６", "1_000", "nan" and "inf", which would
# make a setting mean something else than it says (a checkpoint interval of nan never fires).
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def env_or(value, name: str, default=None):
    """The explicit value if given (a flag given empty is refused by the CLI before, except where empty
    means something: `--topic-prefix ''`), else the environment variable (if set and not empty), else
    the default."""
    if value is not None:
        return value
    return os.environ.get(name) or default


_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]]+):([0-9]{1,5})", re.ASCII)


def bootstrap_servers(value: str, name: str) -> str:
    """``value`` if it is one or more comma-separated HOST:PORT ([IPv6]:PORT) with ports 1-65535;
    else InvalidInput naming the setting (``name``: the flag or variable it came from) and the value."""
    items = [item.strip() for item in str(value).split(",")]
    for item in items:
        match = _HOST_PORT.fullmatch(item)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise InvalidInput(f"{name} {shown(value)}: not HOST:PORT[,HOST:PORT...] (ports 1-65535)")
    return str(value)


def one_of(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidInput(f"{name}: must be one of {', '.join(choices)}")
    return value


def positive_number(value, name: str, kind=float, *, zero_ok: bool = False, maximum: float | None = None):
    """A setting that must be a positive ASCII decimal number (``kind`` int or float; 0 if ``zero_ok``)."""
    text = str(value)
    ok = not isinstance(value, bool) and _NUMBER.fullmatch(text) is not None and not (kind is int and "." in text)
    if ok:
        number = float(text)
        ok = math.isfinite(number) and (number > 0 or (zero_ok and number == 0)) \
            and (maximum is None or number <= maximum)
    if not ok:
        raise InvalidInput(f"{name}: must be a {'whole ' if kind is int else ''}number in ASCII digits, "
                           f"{range_in_words(kind, zero_ok, maximum)}")
    return kind(text)


def range_in_words(kind, zero_ok: bool, maximum: float | None) -> str:
    """The accepted range in words: '0 or more', 'above 0', 'from 1 to 65535', 'above 0, at most 10'."""
    lowest = "0" if zero_ok else "1" if kind is int else None
    if maximum is None:
        return f"{lowest} or more" if lowest is not None else "above 0"
    return f"from {lowest} to {maximum:g}" if lowest is not None else f"above 0, at most {maximum:g}"


def bootstrap_of(args) -> str:
    """The bootstrap servers: --bootstrap, else MASB_BOOTSTRAP, else the default; checked (exit 2)."""
    flag = getattr(args, "bootstrap", None)
    name = "--bootstrap" if flag is not None else "MASB_BOOTSTRAP"
    return bootstrap_servers(env_or(flag, "MASB_BOOTSTRAP", DEFAULT_BOOTSTRAP), name)


@dataclass
class Settings:
    bootstrap: str
    policy_path: Path
    keys_dir: Path
    topic_prefix: str = ""
    # Partitions of case-events and of everything co-partitioned with it (the dedupe table, the case
    # keys): fixed once data flows, and the most workers that can share the routing. A deployment
    # setting: every worker must use the same (MASB_PARTITIONS).
    partitions: int = 6
    replication_factor: int = 3          # replicas of every topic MASB creates (a 3-broker cluster)
    min_insync_replicas: int = 2         # ... of which this many must have a record before it counts
    router_batch: int = 100              # records routed per batch (one wait for acknowledgements each)
    router_batch_window: float = 0.005   # seconds a batch waits for more records once the router is idle
    web_host: str = "127.0.0.1"
    web_port: int = 6066                 # serves /metrics and the HTTP ingest endpoint
    datadir: Path = field(default_factory=lambda: Path(".masb-worker"))
    checkpoint_interval: float = 5.0     # seconds between signed checkpoints while entries arrive
    checkpoint_max_entries: int = 10_000  # ... or sooner, after this many unsigned entries
    policy_poll_interval: float = 2.0    # seconds between checks of the policy file for changes
    # Consumer-group session timeout. Tansu completes a group join only after half of it has
    # passed, so the demo (one worker, embedded broker) sets it to Kafka's minimum, 6 s.
    session_timeout: float = 60.0
    log_origin: str = "masb.local/exchange-log"  # C2SP origin line of the audit checkpoints
    log_level: str = "warn"
    health_interval: float = 5.0         # seconds between probes of the broker and the input partitions
    stall_seconds: float = 60.0          # records waiting this long behind an unmoving offset = stalled
    wedged_seconds: float = 300.0        # own records stalled this long while the router idles: restart (0 = never)
    stop_deadline: float = 10.0          # seconds SIGTERM may take before the worker exits regardless
    fault_injection: bool = False        # POST /debug/... endpoints that break the worker on purpose (tests)
    table_store: str = "rocksdb"         # dedupe table and deadline book: rocksdb (bounded memory) or memory
    deadline_interval: float = 5.0       # seconds between the deadline agent's looks at the clock
    clock: str = ""                      # MASB_CLOCK: "" = system clock; file:PATH for tests only (streams/clock.py)

    @classmethod
    def from_args(cls, args, *, consistent: bool = True) -> "Settings":
        """The settings, each checked (InvalidInput naming the flag or variable); with ``consistent``
        also checked against each other (the demo replaces the topology with its own, so it does not)."""
        settings = cls(
            bootstrap=bootstrap_of(args),
            policy_path=Path(env_or(getattr(args, "policy", None), "MASB_POLICY", "policy.yaml")),
            keys_dir=Path(env_or(getattr(args, "keys_dir", None), "MASB_KEYS_DIR", "keys")),
            topic_prefix=env_or(getattr(args, "topic_prefix", None), "MASB_TOPIC_PREFIX", ""),
            router_batch=positive_number(env_or(None, "MASB_ROUTER_BATCH", 100), "MASB_ROUTER_BATCH", int),
            router_batch_window=positive_number(env_or(None, "MASB_ROUTER_BATCH_WINDOW", 0.005),
                                                "MASB_ROUTER_BATCH_WINDOW", maximum=10),
            partitions=positive_number(env_or(None, "MASB_PARTITIONS", 6), "MASB_PARTITIONS", int, maximum=1000),
            replication_factor=positive_number(env_or(None, "MASB_REPLICATION_FACTOR", 3), "MASB_REPLICATION_FACTOR",
                                               int, maximum=32),
            min_insync_replicas=positive_number(env_or(None, "MASB_MIN_INSYNC_REPLICAS", 2),
                                                "MASB_MIN_INSYNC_REPLICAS", int, maximum=32),
            web_host=env_or(None, "MASB_WEB_HOST", "127.0.0.1"),  # 0.0.0.0 in a container: probes, Prometheus
            web_port=positive_number(env_or(getattr(args, "web_port", None), "MASB_WEB_PORT", 6066), "MASB_WEB_PORT",
                                     int, maximum=65535),  # 1-65535, as --web-port
            datadir=Path(env_or(getattr(args, "datadir", None), "MASB_DATADIR", ".masb-worker")),
            checkpoint_interval=positive_number(env_or(getattr(args, "checkpoint_interval", None),
                                                       "MASB_CHECKPOINT_INTERVAL", 5.0), "MASB_CHECKPOINT_INTERVAL"),
            session_timeout=positive_number(env_or(None, "MASB_SESSION_TIMEOUT", 60.0), "MASB_SESSION_TIMEOUT"),
            log_origin=env_or(None, "MASB_LOG_ORIGIN", "masb.local/exchange-log"),
            log_level=getattr(args, "log_level", None) or "warn",
            health_interval=positive_number(env_or(None, "MASB_HEALTH_INTERVAL", 5.0), "MASB_HEALTH_INTERVAL"),
            stall_seconds=positive_number(env_or(None, "MASB_STALL_SECONDS", 60.0), "MASB_STALL_SECONDS"),
            wedged_seconds=positive_number(env_or(None, "MASB_WEDGED_SECONDS", 300.0), "MASB_WEDGED_SECONDS",
                                           zero_ok=True),
            stop_deadline=positive_number(env_or(None, "MASB_STOP_DEADLINE", 10.0), "MASB_STOP_DEADLINE"),
            fault_injection=env_or(None, "MASB_FAULT_INJECTION", "0") == "1",
            table_store=one_of(env_or(None, "MASB_TABLE_STORE", "rocksdb"), "MASB_TABLE_STORE", ("rocksdb", "memory")),
            deadline_interval=positive_number(env_or(None, "MASB_DEADLINE_INTERVAL", 5.0), "MASB_DEADLINE_INTERVAL"),
            clock=env_or(None, "MASB_CLOCK", ""),
        )
        return settings.checked() if consistent else settings

    def checked(self) -> "Settings":
        if self.min_insync_replicas > self.replication_factor:
            raise InvalidInput(f"MASB_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) is above "
                               f"MASB_REPLICATION_FACTOR ({self.replication_factor}): no write could ever succeed")
        return self
