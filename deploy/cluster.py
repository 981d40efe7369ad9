"""A multi-node Apache Kafka cluster on this machine (KRaft, every node a broker and a controller),
for the scale-out and failover tests: replication 3, min.insync.replicas 2, free loopback ports.

    with KafkaCluster(nodes=3) as cluster:
        cluster.bootstrap          # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        cluster.kill(1)            # node 1 gone (SIGKILL), its data kept
        cluster.restart(1)         # and back, on the same ports

Each node runs in its own process group and is stopped at the end, like deploy.brokers.KafkaBroker.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from deploy.brokers import BrokerError, KafkaBroker, free_port


class KafkaNode(KafkaBroker):
    """One node of a KafkaCluster: fixed ports and a shared quorum, formatted with the cluster's id."""

    def __init__(self, workdir: Path, node_id: int, port: int, controller_port: int, voters: str, cluster_id: str,
                 nodes: int, heap: str) -> None:
        super().__init__(workdir, heap=heap)
        self.name = f"kafka-node{node_id}"
        self.node_id, self.port, self.controller_port = node_id, port, controller_port
        self.voters, self.cluster_id, self.nodes = voters, cluster_id, nodes

    def _prepare(self) -> None:
        replicas = min(3, self.nodes)
        (self.workdir / "server.properties").write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={self.voters}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.workdir / 'data'}",
            "num.partitions=1",
            f"default.replication.factor={replicas}",
            f"min.insync.replicas={max(1, replicas - 1)}",
            f"offsets.topic.replication.factor={replicas}",
            "offsets.topic.num.partitions=4",
            f"transaction.state.log.replication.factor={replicas}",
            f"transaction.state.log.min.isr={max(1, replicas - 1)}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "",
        ]))
        fmt = subprocess.run([*self._java(), "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c",
                              str(self.workdir / "server.properties")], capture_output=True, text=True, env=self._env())
        if fmt.returncode != 0:
            raise BrokerError(f"formatting {self.name} failed: {fmt.stderr[-2000:]}")

    def launch(self) -> None:
        """Start the process without waiting: a KRaft quorum answers only once a majority runs."""
        self._prepare()
        atexit.register(self.stop)
        self._log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(self._command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True, env=self._env())


class KafkaCluster:
    def __init__(self, nodes: int = 3, workdir: str | os.PathLike | None = None, heap: str = "512m") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="masb-kafka-cluster-"))
        ports = [(free_port(), free_port()) for _ in range(nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        cluster_id = uuid.uuid4().hex[:22]
        self.nodes = []
        for i, (port, controller_port) in enumerate(ports):
            node_dir = self.workdir / f"node{i + 1}"
            node_dir.mkdir(parents=True, exist_ok=True)
            self.nodes.append(KafkaNode(node_dir, i + 1, port, controller_port, voters, cluster_id, nodes, heap))

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 120.0) -> "KafkaCluster":
        for node in self.nodes:
            node.launch()
        try:
            asyncio.run(self._wait_all_brokers(timeout))
        except BaseException:
            self.cleanup()
            raise
        return self

    async def _wait_all_brokers(self, timeout: float) -> None:
        from streams.kafka import admin

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node._proc is not None and node._proc.poll() is not None:
                    raise BrokerError(f"{node.name} exited with code {node._proc.returncode}; see {node.log_path}")
            client = admin(self.bootstrap, request_timeout_ms=5000)
            try:
                await client.start()
                if len((await client.describe_cluster()).get("brokers") or []) == len(self.nodes):
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            finally:
                await client.close()
            await asyncio.sleep(1)
        raise BrokerError(f"the {len(self.nodes)}-node cluster was not ready after {timeout:.0f}s")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.nodes[index].kill(sig)

    def restart(self, index: int) -> None:
        self.nodes[index].restart()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "KafkaCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
