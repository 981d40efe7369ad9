"""HTTP ingest for a harm assessment unit's case system: POST JSON events, get 202 once Kafka has them.

Run by the unit itself, next to its case system (its private signing key never leaves the unit):

    app = build_ingest_app(IngestService(bootstrap, policy, unit_key, topics, pseudonyms=pseudonym_keys))
    POST /events   JSON object or array of objects -> validate, sign, seal, produce, wait for acks
    GET  /health   200 when Kafka answers, 503 when it does not
    GET  /metrics  Prometheus counters of this ingest (labels: status codes and event types only)

Status codes (docs/publishing.md): 202 accepted and acknowledged by Kafka; 400 invalid or
ambiguous JSON (streams.jsonin: repeated keys, lone surrogates, NaN, ...) or invalid events (each
error names a field path and a problem, never a value); 401 bad or missing bearer token (when one
is configured); 403 the unit may not publish this type/area; 413 body too large (or a record
Kafka refused for good: a case-events topic whose max.message.bytes is too small); 415 not
application/json, or a Content-Encoding other than identity, gzip or deflate; 503 Kafka
unreachable: the events may or may not have been written, and the client must retry with the
same event ids (the router delivers an event id once).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, ContentLengthError, TransferEncodingError
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from streams import codec, jsonin, problems as shown_problems
from streams.crypto.keys import PrivateKeyRecord
from streams.crypto.pseudonym import PseudonymKeys
from streams.errors import InvalidInput
from streams.kafka import NEVER_ACCEPTED, producer as make_producer
from streams.kafka_security import KafkaSecurity
from streams.policy import Policy
from streams.publisher import PublishRefused, prepare_publication
from streams.topics import Topics

log = logging.getLogger("masb.ingest")

MAX_BODY_BYTES = 1024 * 1024     # one request; a single event's wire form is at most 64 KiB
MAX_EVENTS_PER_REQUEST = 100
DEFAULT_SEND_TIMEOUT = 10.0      # seconds to wait for Kafka's acknowledgement before answering 503
RETRY_AFTER_SECONDS = 5

REQUESTS = Counter("masb_ingest_requests_total", "HTTP ingest requests by response status", ["status"])
EVENTS = Counter("masb_ingest_events_total", "Events accepted (acknowledged by Kafka) by the HTTP ingest",
                 ["event_type"])


class IngestConfigError(InvalidInput, ValueError):
    """The ingest cannot run with this key and policy (said at start, not on the first request)."""


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str
    index: int | None = None  # position in a JSON array body; None for a single-object body

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "problem": self.problem}
        if self.index is not None:
            out["index"] = self.index
        return out


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time; ``acknowledged`` lists the event ids that it did."""

    def __init__(self, acknowledged: list[str]):
        super().__init__("Kafka did not acknowledge")
        self.acknowledged = acknowledged


class KafkaRefused(KafkaUnavailable):
    """Kafka refused a record for good (larger than the topic's max.message.bytes): a retry of the
    same request cannot succeed. ``error``: the aiokafka error's class name."""

    def __init__(self, acknowledged: list[str], error: str):
        super().__init__(acknowledged)
        self.error = error


class IngestService:
    """Checks and produces events for one unit; owns one Kafka producer, (re)started on demand."""

    def __init__(self, bootstrap: str, policy: Policy, unit_key: PrivateKeyRecord, topics: Topics | None = None,
                 *, pseudonyms: PseudonymKeys, security: KafkaSecurity | None = None,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT, token: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, max_events: int = MAX_EVENTS_PER_REQUEST):
        if unit_key.kind != "signing":
            raise IngestConfigError("the key given is not a signing key")
        unit = policy.unit(unit_key.owner)
        if unit is None:
            raise IngestConfigError(f"unit {unit_key.owner} is not a unit of policy version {policy.version}")
        if policy.unit_verify_key(unit.id, unit_key.key_id) is None:
            raise IngestConfigError(f"signing key {unit_key.key_id} is not a trusted key of {unit.id} "
                                    f"in policy version {policy.version} (unknown or revoked)")
        self.bootstrap = bootstrap
        self.security = security  # None: the environment's settings (docs/security.md)
        self.policy = policy
        self.unit_key = unit_key
        self.pseudonyms = pseudonyms
        self.unit_id = unit.id
        self.topics = topics or Topics.from_env()
        self.send_timeout = send_timeout
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.max_events = max_events
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._kafka_up: bool | None = None  # None until the first request or health check
        self._kafka_since = time.monotonic()

    def _kafka_state(self, up: bool, error: str | None = None) -> None:
        """Log once when Kafka is lost and once when it is back, not once per request."""
        if up == self._kafka_up:
            return
        now = time.monotonic()
        if up and self._kafka_up is False:
            log.warning("Kafka at %s reachable again after %.0fs", self.bootstrap, now - self._kafka_since)
        elif not up:
            log.error("Kafka at %s unreachable (%s); POST /events answers 503 until it is back", self.bootstrap, error)
        self._kafka_up, self._kafka_since = up, now

    # -- checks (no I/O) ---------------------------------------------------------------------
    def check(self, events: list[Any], indexed: bool) -> tuple[list[tuple[str, bytes, bytes]], list[Problem], int]:
        """(event id, key, value) per event (the id lower-case, as the log stores it), the problems
        found, and the status they call for (202 if none, 400 if any event is invalid, else 403:
        every problem is a refusal)."""
        prepared, problems, refused, invalid = [], [], False, False
        for i, event in enumerate(events):
            index = i if indexed else None
            try:
                ready = prepare_publication(event, self.policy, self.unit_key, self.pseudonyms)
            except codec.EventValidationError as exc:
                problems += [Problem(e.path, e.problem, index) for e in exc.errors]
                invalid = True
                continue
            except PublishRefused as exc:
                refused = True
                problems.append(Problem(_refusal_path(event, self.unit_id), str(exc), index))
                continue
            except (TypeError, KeyError, AttributeError):
                problems.append(Problem("<event>", "not a case event object (see docs/events.md)", index))
                invalid = True
                continue
            prepared.append((ready.event_id, ready.key, ready.value))  # the id as the log stores it
        return prepared, problems, 400 if invalid else 403 if refused else 202

    # -- Kafka -------------------------------------------------------------------------------
    async def _ready_producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                candidate = make_producer(self.bootstrap, security=self.security,
                                          request_timeout_ms=int(self.send_timeout * 1000))
                try:
                    await asyncio.wait_for(candidate.start(), self.send_timeout)
                except Exception:
                    await _quietly_stop(candidate)
                    raise
                self._producer = candidate
            return self._producer

    async def produce(self, prepared: list[tuple[str, bytes, bytes]]) -> list[str]:
        """Produce every record and wait until Kafka acknowledged all; KafkaUnavailable otherwise."""
        acknowledged: list[str] = []
        try:
            producer = await self._ready_producer()
            futures = [await asyncio.wait_for(producer.send(self.topics.case_events, value=value, key=key),
                                              self.send_timeout)
                       for _, key, value in prepared]
            for (event_id, _, _), future in zip(prepared, futures):
                await asyncio.wait_for(future, self.send_timeout + 1)
                acknowledged.append(event_id)
        except Exception as exc:  # noqa: BLE001 - connection, timeout, broker errors: all mean "not known written"
            await self._drop_producer()  # also what a refusal needs: aiokafka's producer is unusable after one
            if isinstance(exc, NEVER_ACCEPTED):
                log.warning("Kafka refused a record for good (%s); %d of %d events acknowledged",
                            type(exc).__name__, len(acknowledged), len(prepared))
                raise KafkaRefused(acknowledged, type(exc).__name__) from None
            self._kafka_state(False, type(exc).__name__)
            log.info("503: %d of %d events acknowledged (%s)", len(acknowledged), len(prepared), type(exc).__name__)
            raise KafkaUnavailable(acknowledged) from None
        self._kafka_state(True)
        return acknowledged

    async def kafka_ok(self) -> bool:
        try:
            producer = await self._ready_producer()
            ok = bool(await asyncio.wait_for(producer.client.force_metadata_update(), self.send_timeout))
        except Exception as exc:  # noqa: BLE001 - any failure means Kafka does not answer
            await self._drop_producer()
            self._kafka_state(False, type(exc).__name__)
            return False
        self._kafka_state(ok, None if ok else "no metadata")
        return ok

    async def _drop_producer(self) -> None:
        async with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            await _quietly_stop(old)

    async def close(self) -> None:
        await self._drop_producer()


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5)
    except Exception:  # noqa: BLE001, S110 - a producer that never connected may fail to stop cleanly
        pass


def _refusal_path(event: Any, unit_id: str) -> str:
    """Which header field a refusal is about (the event already validated, so the header is sound)."""
    header = event["header"]
    return "header.unit_id" if header.get("unit_id") != unit_id else "header"


def _error_response(status: int, problems: list[Problem], **extra: Any) -> web.Response:
    """The documented error body; at most streams.problems.MAX_SHOWN problems, then ``total_problems``."""
    REQUESTS.labels(str(status)).inc()
    problems, left_out = shown_problems.first(problems)
    if left_out:
        extra["total_problems"] = len(problems) + left_out
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="masb-ingest"'}
    return web.json_response({"errors": [p.as_json() for p in problems], **extra}, status=status, headers=headers)


def _json_problem(problem: jsonin.JsonProblem) -> Problem:
    """A problem of the request body as the JSON reader found it: field path and array index."""
    path, index = problem.path, None
    if path and isinstance(path[0], int):
        index, path = path[0], path[1:]
    return Problem(jsonin.format_path(path, "<body>" if index is None else "<event>"), problem.describe(), index)


def _body_problem(status: int, problem: str) -> web.Response:
    return _error_response(status, [Problem("<body>", problem)])


# Content-Encodings of a request body: aiohttp decodes gzip and deflate with the standard library
# (and refuses a body larger than the limit once decoded); br and zstd need optional libraries, so
# whether they worked would depend on the installation: they are refused, like any other.
ACCEPTED_ENCODINGS = ("identity", "gzip", "deflate")


def _unreadable_body(exc: BaseException, encoding: str) -> web.Response:
    """400 for a body that could not be read: bad compressed data, a truncated or malformed chunked
    body, a connection closed early. One log line naming the kind, never the bytes."""
    cause = exc.__cause__ if isinstance(exc, web.RequestPayloadError) and exc.__cause__ else exc
    if isinstance(cause, ContentEncodingError):
        problem = f"the body is not valid {encoding} data (Content-Encoding: {encoding})"
    elif isinstance(cause, TransferEncodingError):
        problem = "the chunked body is malformed or incomplete"
    elif isinstance(cause, ContentLengthError):
        problem = "the body is shorter than its Content-Length"
    elif isinstance(cause, ConnectionError):
        problem = "the connection closed before the whole body arrived"
    else:
        problem = "the body could not be read"
    log.warning("400: request body unreadable (%s)", type(cause).__name__)
    return _body_problem(400, problem)


def build_ingest_app(service: IngestService) -> web.Application:
    # client_max_size makes aiohttp refuse a larger body while reading it (chunked bodies included).
    app = web.Application(client_max_size=service.max_body_bytes)

    async def post_events(request: web.Request) -> web.Response:
        if service.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {service.token}".encode()):
                return _body_problem(401, "missing or wrong bearer token")
        if request.content_type != "application/json":
            return _body_problem(415, "the content type must be application/json")
        if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            return _body_problem(415, "the charset must be utf-8")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        if encoding not in ACCEPTED_ENCODINGS:
            return _body_problem(415, f"the Content-Encoding must be one of {', '.join(ACCEPTED_ENCODINGS)}")
        if request.content_length is not None and request.content_length > service.max_body_bytes:
            return _body_problem(413, f"the body is larger than {service.max_body_bytes} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _body_problem(413, f"the body is larger than {service.max_body_bytes} bytes")
        except (web.RequestPayloadError, ConnectionError) as exc:
            # The rest of this body cannot be read either: mark it read, so that aiohttp does not
            # try again (and log the error with a traceback), and close the connection after the answer.
            request.content.feed_eof()
            response = _unreadable_body(exc, encoding)
            response.force_close()
            return response
        try:
            body = jsonin.loads(raw)  # strict: repeated keys, lone surrogates, NaN... are refused
        except jsonin.JsonInputError as exc:
            return _error_response(400, [_json_problem(p) for p in exc.problems])
        indexed = isinstance(body, list)
        events = body if indexed else [body]
        if not isinstance(body, (list, dict)):
            return _body_problem(400, "expected a JSON object (one event) or an array of objects")
        if not events:
            return _body_problem(400, "the array holds no event")
        if len(events) > service.max_events:
            return _body_problem(413, f"more than {service.max_events} events in one request")
        prepared, problems, status = service.check(events, indexed)
        if problems:  # nothing is produced unless every event of the request passes
            return _error_response(status, problems)
        try:
            ids = await service.produce(prepared)
        except KafkaRefused as exc:
            return _error_response(413, [Problem("<kafka>", f"Kafka refused the record for {service.topics.case_events} "
                                                 f"for good ({exc.error}): the topic's max.message.bytes is below "
                                                 f"MASB's event size limit; do not retry, tell the platform team")],
                                   acknowledged=exc.acknowledged)
        except KafkaUnavailable as exc:
            return _error_response(503, [Problem("<kafka>", "Kafka did not acknowledge in time; the events may "
                                                 "or may not have been written: retry the same request (same "
                                                 "event ids) later")],
                                   acknowledged=exc.acknowledged, retry_after=RETRY_AFTER_SECONDS)
        for event in events:
            EVENTS.labels(event["header"]["event_type"]).inc()
        REQUESTS.labels("202").inc()
        log.info("accepted %d event(s): %s", len(ids), ", ".join(ids))
        return web.json_response({"event_ids": ids} if indexed else {"event_id": ids[0]}, status=202)

    async def health(request: web.Request) -> web.Response:
        ok = await service.kafka_ok()
        return web.json_response({"status": "ok" if ok else "kafka_unreachable", "unit_id": service.unit_id,
                                  "policy_version": service.policy.version, "kafka": ok},
                                 status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    async def close(_app: web.Application) -> None:
        await service.close()

    app.router.add_post("/events", post_events)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(close)
    return app
