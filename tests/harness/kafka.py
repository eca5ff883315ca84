"""A real single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) for tests.

Java and the cached Maven Central jars are located by ``kafka_libs.py`` (no
emulator); its functions and constants are re-exported here.

Typical use::

    libs, reason = find_kafka_libs()
    if libs is None:
        pytest.skip(reason)
    broker = KafkaBroker(libs, tmp_path / "kafka")
    broker.start()
    try:
        ...  # KafkaProducer(bootstrap_servers=broker.bootstrap)
    finally:
        broker.stop()

Only the standard library and kafka-python are used here.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from .kafka_libs import (  # noqa: F401 - re-exported
    JARS_SCRIPT, MIN_JAVA, POM, REPO_ROOT, STAMP_NAME, KafkaBrokerError, find_java,
    find_kafka_libs, kafka_version, libs_dir,
)
from .process import cleanup_at_exit, escalate, free_port, spawn

__all__ = [
    "KafkaBroker",
    "KafkaBrokerError",
    "find_java",
    "find_kafka_libs",
    "free_port",
    "kafka_version",
    "libs_dir",
]


def _new_cluster_id() -> str:
    # what `kafka-storage random-uuid` prints: url-safe base64 of 16 random
    # bytes without padding, never starting with '-'
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


# written to the workdir on every start: all logging to stdout (-> broker.log)
_LOG4J2_XML = (Path(__file__).parent / "kafka-log4j2.xml").read_text()

# JVM flags for a test broker on a small machine: 512 MiB heap, serial GC (no
# GC threads), C1 only (starts faster; enough throughput for tests).
# FRONTDESK_KAFKA_JAVA_OPTS is appended, so it can override any of these
# (e.g. "-XX:TieredStopAtLevel=4" for a benchmark).
_JVM_FLAGS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xss512k",
    "-Djava.awt.headless=true",
    "-Dlog4j2.disable.jmx=true",
]

# a test run that forgot stop() must not leave JVMs behind
_live_brokers = cleanup_at_exit("kill")


class KafkaBroker:
    """One Kafka process (KRaft broker+controller) on 127.0.0.1.

    ``workdir`` holds server.properties, log4j2.xml, the data dir (``data/``),
    the cluster id (``cluster.id``) and the process output (``broker.log``).
    Re-using the same workdir (restart(), or a new KafkaBroker on the same
    workdir and port) keeps the data and committed offsets.

    ``props`` overrides or adds server.properties entries.
    """

    LOG_NAME = "broker.log"

    def __init__(
        self,
        libs: Path,
        workdir: Path,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        props: dict[str, object] | None = None,
        java: str | None = None,
    ) -> None:
        self.libs = Path(libs)
        self.workdir = Path(workdir).resolve()
        self._auto_ports = port is None and controller_port is None
        self._started_once = False
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.props = dict(props or {})
        self._java = java
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / self.LOG_NAME
        self.properties_path = self.workdir / "server.properties"
        self.log4j_path = self.workdir / "log4j2.xml"
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0
        self.last_start_seconds: float | None = None
        self.last_format_seconds: float | None = None

    # -- public --------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> "KafkaBroker":
        """Format the storage (first time only), start the broker and wait until
        it answers metadata requests. Raises KafkaBrokerError with the log tail."""
        if self.is_running():
            return self
        if self._proc is not None:  # it died by itself: reap it, close its log
            self._terminate(signal.SIGKILL, 10)
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        # ports we picked ourselves may be taken by someone else meanwhile:
        # on the first start, retry with new ones (later starts keep the ports)
        attempts = 3 if self._auto_ports and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            self._write_config()
            if not (self.data_dir / "meta.properties").exists():
                self._format(max(5.0, deadline - time.monotonic()))
            self._spawn()
            try:
                self._wait_ready(deadline)
                break
            except KafkaBrokerError:
                self._terminate(signal.SIGKILL, 10)
                if attempt < attempts and "Address already in use" in self.log_tail(400):
                    self.port, self.controller_port = free_port(), free_port()
                    continue
                raise
            except BaseException:
                self._terminate(signal.SIGKILL, 10)
                raise
        self._started_once = True
        self.last_start_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout`` seconds."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the broker at once (unclean shutdown, for fault tests)."""
        self._terminate(signal.SIGKILL, 10)

    def restart(self, timeout: float = 60, *, kill: bool = False) -> "KafkaBroker":
        """Stop (or kill) and start again on the same ports with the same data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 60, *, since_last_start: bool = True) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if since_last_start:
                    f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<KafkaBroker {self.bootstrap} {state} workdir={self.workdir}>"

    # -- internals -------------------------------------------------------------

    def _java_path(self) -> str:
        if self._java is None:
            java, reason = find_java()
            if java is None:
                raise KafkaBrokerError(reason)
            self._java = java
        return self._java

    def _classpath(self) -> str:
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise KafkaBrokerError(f"no kafka_2.13 jar in {self.libs}; run scripts/kafka-jars.sh")
        return str(self.libs / "*")

    def _server_properties(self) -> dict[str, object]:
        p, c = self.port, self.controller_port
        props: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@127.0.0.1:{c}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # single node: every internal topic with one replica
            "num.partitions": 4,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 4,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "group.initial.rebalance.delay.ms": 0,
            # after kill() the controller refuses the new incarnation until the
            # old one's session expires (DUPLICATE_BROKER_REGISTRATION): keep it short
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            # fewer threads on a small machine
            "num.network.threads": 2,
            "num.io.threads": 4,
            "background.threads": 4,
            "num.recovery.threads.per.data.dir": 1,
            "log.cleaner.threads": 1,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
            # keep segments/indexes small on disk
            "log.segment.bytes": 64 * 1024 * 1024,
            "log.index.size.max.bytes": 1024 * 1024,
        }
        props.update(self.props)
        return props

    def _write_config(self) -> None:
        lines = ["# written by tests/harness/kafka.py"]
        lines += [f"{k}={v}" for k, v in self._server_properties().items()]
        self.properties_path.write_text("\n".join(lines) + "\n")
        self.log4j_path.write_text(_LOG4J2_XML)

    def _cluster_id(self) -> str:
        path = self.workdir / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        cid = _new_cluster_id()
        path.write_text(cid + "\n")
        return cid

    def _jvm_cmd(self, main: str, *args: str) -> list[str]:
        return [
            self._java_path(),
            *_JVM_FLAGS,
            *shlex.split(os.environ.get("FRONTDESK_KAFKA_JAVA_OPTS", "")),
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp", self._classpath(),
            main, *args,
        ]

    def _format(self, timeout: float) -> None:
        t0 = time.monotonic()
        cmd = self._jvm_cmd(
            "kafka.tools.StorageTool", "format",
            "--cluster-id", self._cluster_id(),
            "--config", str(self.properties_path),
            "--ignore-formatted",
        )
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== harness: format storage {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            try:
                rc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    timeout=timeout, cwd=self.workdir,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0 or not (self.data_dir / "meta.properties").exists():
            raise KafkaBrokerError(
                f"kafka storage format failed ({rc}); log {self.log_path}:\n"
                + self.log_tail(30, since_last_start=False)
            )
        self.last_format_seconds = time.monotonic() - t0

    def _spawn(self) -> None:
        cmd = self._jvm_cmd("kafka.Kafka", str(self.properties_path))
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self._log_file.tell()
        self._log_file.write(
            f"\n=== harness: start kafka on {self.bootstrap} "
            f"(controller {self.controller_port}) {time.strftime('%H:%M:%S')}\n".encode()
        )
        self._log_file.flush()
        self._proc = spawn(cmd, self._log_file, cwd=self.workdir)
        _live_brokers.add(self)

    def _fail(self, what: str) -> KafkaBrokerError:
        return KafkaBrokerError(
            f"Kafka broker {what} (bootstrap {self.bootstrap}, log {self.log_path}); log tail:\n"
            + self.log_tail(60)
        )

    def _wait_ready(self, deadline: float) -> None:
        # 1) the PLAINTEXT port accepts connections
        while True:
            if self._proc.poll() is not None:
                raise self._fail(f"exited with code {self._proc.returncode} during startup")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._fail("did not open its port in time")
            time.sleep(0.1)
        # 2) it answers metadata with itself registered as a broker
        from kafka import KafkaAdminClient  # deferred: keep import of this module cheap

        last_exc: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                raise self._fail(f"exited with code {self._proc.returncode} during startup")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail(f"did not answer metadata in time (last error: {last_exc!r})")
            admin = None
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap,
                    client_id="harness-ready-check",
                    bootstrap_timeout_ms=int(max(1, min(remaining, 5)) * 1000),
                    request_timeout_ms=5000,
                    reconnect_backoff_ms=50,
                    reconnect_backoff_max_ms=200,
                )
                meta = admin.describe_cluster()
                if meta.get("brokers") and meta.get("controller_id", -1) not in (None, -1):
                    return
                last_exc = RuntimeError(f"cluster not ready: {meta}")
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last_exc = exc
            finally:
                if admin is not None:
                    try:
                        admin.close()
                    except Exception:  # noqa: BLE001
                        pass
            time.sleep(0.1)

    def _terminate(self, sig: int, timeout: float) -> None:
        if self._proc is not None:
            escalate(self._proc, (sig, True, timeout), (signal.SIGKILL, True, 10))
            self._proc = None
        _live_brokers.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
