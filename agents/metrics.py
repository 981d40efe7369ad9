"""Prometheus metrics of the worker. Labels are event types, agency ids and reason codes only:
never anything from inside an event."""

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram, Info

EVENTS_ROUTED = Counter("masb_events_routed_total", "Case events admitted and routed", ["event_type"])
ENVELOPES = Counter("masb_envelopes_total", "Envelopes encrypted and sent", ["event_type", "agency"])
REFUSED = Counter("masb_refused_total", "Input records refused and dead-lettered", ["reason_code"])
DUPLICATES = Counter("masb_duplicates_total", "Republished event ids suppressed", ["event_type"])
AUDIT_ENTRIES = Counter("masb_audit_entries_total", "Audit entries written", ["kind"])
ROUTING_SECONDS = Histogram("masb_routing_seconds", "Time to route one event (decision + sends acknowledged)",
                            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
ENCRYPT_SECONDS = Histogram("masb_encrypt_seconds", "Time to build and seal all envelopes of one event",
                            buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1))
POLICY_VERSION = Gauge("masb_policy_version", "Version of the sharing policy in force")
POLICY_RELOAD_FAILURES = Counter("masb_policy_reload_failures_total", "Policy files refused at reload")
CHECKPOINT_SIZE = Gauge("masb_audit_checkpoint_size", "Tree size of the last signed audit checkpoint")
CHECKPOINT_COSIGNATURES = Gauge("masb_audit_checkpoint_cosignatures",
                                "Witness cosignatures on the last published audit checkpoint")

# Which release each worker runs (a rolling upgrade shows old and new side by side).
BUILD = Info("masb_build", "The MASB release this worker runs")
try:
    BUILD.info({"version": version("masb")})
except PackageNotFoundError:  # a source tree that was never installed
    BUILD.info({"version": "unknown"})
