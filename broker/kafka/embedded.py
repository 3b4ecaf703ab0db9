"""The embedded development broker: Apache Kafka (KRaft) run from Maven Central jars, as one
node, or as a cluster of three (``cbx kafka start --brokers 3``).

Layout (``CBX_CACHE_DIR`` defaults to ~/.cache/cbx, ``CBX_HOME`` to ~/.local/share/cbx)::

    $CBX_CACHE_DIR/kafka/<version>/libs/*.jar   resolved by deploy/local-kafka/pom.xml
    $CBX_HOME/kafka/state.json                  addresses, pids, data folder of what runs
    $CBX_HOME/kafka/data/                       one node: server.properties, KRaft log dirs
    $CBX_HOME/kafka/data/node-<id>/             a cluster: the same, per node

A node keeps its ports across restarts: a KRaft controller formatted with ``--standalone``
records its own endpoint in the metadata log, and a cluster's static voters name their
controllers' ports, so a restart on other ports would not find its quorum. Each node of a cluster
is a broker and a controller; the three controllers are the quorum's voters.

One module, on purpose: install, format, configure, start, status and stop all work on the one
layout above, and splitting them would spread its paths over several files.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from broker import env
from broker.errors import EmbeddedKafkaError, JavaNotFoundError
from broker.files import write_private, write_private_json
from broker.kafka.settings import BROKER_GROUP_SETTINGS, KafkaSettings
from broker.kafka.tls import ensure_dev_pki
from broker.paths import cbx_cache, cbx_home, project_root

KAFKA_VERSION = "4.1.1"
_REPO_ROOT = project_root()
_POM = _REPO_ROOT / "deploy" / "local-kafka" / "pom.xml"
_LOG4J = _REPO_ROOT / "deploy" / "local-kafka" / "log4j2.properties"
_STARTUP_TIMEOUT_S = float(env.get("CBX_KAFKA_STARTUP_TIMEOUT", "120") or "120")
_STOP_TIMEOUT_S = 30.0
ALTERNATIVES = (
    "set CBX_BOOTSTRAP_SERVERS=host:port to use an existing Kafka cluster, "
    "or run one with deploy/docker-compose.yml"
)


@dataclass(frozen=True)
class BrokerState:
    """What ``cbx kafka start`` records about the running broker."""

    bootstrap: str
    controller: str
    pid: int
    data_dir: str
    version: str
    started_at: float
    tls_bootstrap: str = ""
    ca_file: str = ""
    #: Nodes of a cluster (one broker and controller each), and their pids in node order.
    brokers: int = 1
    pids: tuple[int, ...] = ()

    def node_pids(self) -> tuple[int, ...]:
        return self.pids or (self.pid,)

    def settings(self, tls: bool = False) -> KafkaSettings:
        """Client settings for this broker, as its administrator (super user).

        With ``tls`` the SASL_SSL listener, verified against the development CA.
        """
        return KafkaSettings(
            bootstrap_servers=self.tls_bootstrap if tls else self.bootstrap,
            security_protocol="SASL_SSL" if tls else "SASL_PLAINTEXT",
            ssl_cafile=self.ca_file if tls else None,
            sasl_mechanism=MECHANISM,
            sasl_username=ADMIN,
            sasl_password=admin_password(Path(self.data_dir)),
            topic_prefix=env.get("CBX_TOPIC_PREFIX", "cbx") or "cbx",
        )

    @property
    def log_file(self) -> Path:
        return Path(self.data_dir) / "server.log"


def admin_password(data: Path) -> str:
    """The embedded broker's admin password (created with its storage, kept 0600 beside it)."""
    try:
        return str(json.loads((data / "admin-credentials.json").read_text())["password"])
    except (OSError, ValueError, KeyError) as exc:
        raise EmbeddedKafkaError(
            f"the embedded broker's admin credentials are missing from {data}: "
            "run `cbx kafka stop --purge` and start afresh"
        ) from exc


def _write_admin_password(data: Path) -> str:
    password = secrets.token_urlsafe(24)
    path = data / "admin-credentials.json"
    write_private_json(path, {"username": ADMIN, "password": password})
    return password


def kafka_dir() -> Path:
    return cbx_home() / "kafka"


def state_file() -> Path:
    return kafka_dir() / "state.json"


def data_dir() -> Path:
    return kafka_dir() / "data"


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cbx_cache() / "kafka" / version / "libs"


# --- Java and jars -------------------------------------------------------------------------------


def find_java() -> str:
    """Path of a Java 17+ ``java`` on PATH, or JavaNotFoundError naming the alternatives."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            f"Java 17 or later is needed for the embedded Kafka broker and `java` is not on PATH; "
            f"{ALTERNATIVES}"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 17:
        raise JavaNotFoundError(
            f"the embedded Kafka broker needs Java 17 or later, found {major or 'unknown'} at "
            f"{java}; {ALTERNATIVES}"
        )
    return java


def install(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Resolve the broker's jars from Maven Central into the cache; idempotent."""
    libs = libs_dir(version)
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmbeddedKafkaError(
            f"Maven (`mvn`) is needed once to fetch the Kafka {version} jars and is not on PATH; "
            f"install Maven, or {ALTERNATIVES}"
        )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(_POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise EmbeddedKafkaError(f"resolving Kafka {version} jars with Maven failed", tail)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(json.dumps({"version": version, "resolved_at": time.time()}))
    return libs


# --- Process helpers -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    """True when nothing listens on ``port`` (closed connections in TIME_WAIT do not count:
    Kafka binds with SO_REUSEADDR, and so does this check)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _is_kafka_process(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) ``kafka.Kafka`` JVM."""
    with contextlib.suppress(ChildProcessError, OSError):
        # Reap it if it is our own exited child, so it does not linger as a zombie.
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and b"kafka.Kafka" in cmdline


def _accepts_connections(bootstrap: str, timeout: float = 1.0) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kafka_cluster_id() -> str:
    # Kafka's Uuid: 16 random bytes, base64url without padding, never starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


ADMIN = "admin"
MECHANISM = "SCRAM-SHA-512"


def _server_properties(
    data: Path,
    broker_port: int,
    controller_port: int,
    tls_port: int,
    admin_password: str,
    *,
    node_id: int = 1,
    voters: str = "",
    pki_dir: Path | None = None,
) -> str:
    """One node's configuration. ``voters`` (``1@host:port,...``) makes it one of a cluster's
    controllers, with replication 3 and min ISR 2 for internal topics; without, a lone node."""
    pki = ensure_dev_pki(pki_dir or data / "tls")
    replicas, min_isr = ("3", "2") if voters else ("1", "1")
    quorum = (
        {"controller.quorum.voters": voters}
        if voters
        else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}"}
    )
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN}" password="{admin_password}";'
    )
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        **quorum,
        "listeners": (
            f"SASL_PLAINTEXT://127.0.0.1:{broker_port},SASL_SSL://127.0.0.1:{tls_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}"
        ),
        "advertised.listeners": (
            f"SASL_PLAINTEXT://127.0.0.1:{broker_port},SASL_SSL://127.0.0.1:{tls_port}"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": (
            "SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
        ),
        # TLS for clients that want it (what production uses), with a development CA.
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.keystore_file),
        "ssl.client.auth": "none",
        # Clients authenticate with SCRAM-SHA-512; every topic, group and transactional id
        # needs an ACL. The admin super user administers; the loopback-only controller listener
        # (ANONYMOUS) is the broker talking to its own controller.
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{ADMIN};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
        "log.dirs": str(data / "kraft-logs"),
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # A replica that fell behind may not become leader: acknowledged writes are never lost.
        "unclean.leader.election.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        **{name: str(value) for name, value in BROKER_GROUP_SETTINGS.items()},
        "auto.create.topics.enable": "false",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
        # Let aborted-transaction tests and crash-restart tests finish quickly.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
        "transaction.max.timeout.ms": "900000",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _java_cmd(
    java: str, libs: Path, data: Path, main: str, *args: str, heap_default: str = "768m"
) -> list[str]:
    heap = env.get("CBX_KAFKA_HEAP", heap_default) or heap_default
    return [
        java,
        f"-Xms{min(256, int(heap.rstrip('m')) if heap.endswith('m') else 256)}m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data}",
        f"-Dlog4j2.configurationFile={_LOG4J}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


# --- Public operations ---------------------------------------------------------------------------


def read_state() -> BrokerState | None:
    try:
        fields = json.loads(state_file().read_text())
        fields["pids"] = tuple(fields.get("pids", ()))
        return BrokerState(**fields)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def status() -> BrokerState | None:
    """The running embedded broker or cluster (some of its nodes may be down), or None (a stale
    state file is removed)."""
    state = read_state()
    if state is None:
        return None
    alive = [pid for pid in state.node_pids() if _is_kafka_process(pid)]
    if alive and any(_accepts_connections(b) for b in state.bootstrap.split(",")):
        return state
    if not alive:
        state_file().unlink(missing_ok=True)
    return None


def start(version: str = KAFKA_VERSION, brokers: int | None = None) -> BrokerState:
    """Start the embedded broker (``brokers`` 3: a cluster of three nodes), or return what runs
    already (None: whatever runs, else one broker)."""
    running = status()
    if running is not None:
        if brokers is not None and running.brokers != brokers:
            raise EmbeddedKafkaError(
                f"an embedded Kafka of {running.brokers} broker(s) is running: "
                "stop it first (cbx kafka stop)"
            )
        return running
    if brokers not in (None, 1):
        return _start_cluster(version, brokers or 1)
    if (data_dir() / "node-1").exists():
        raise EmbeddedKafkaError(
            "the embedded Kafka data here is a cluster's: start it with --brokers 3, "
            "or run `cbx kafka stop --purge` to start afresh"
        )
    java, libs, data = _prepare(version)
    props_file = data / "server.properties"
    ports_file = data / "ports.json"
    formatted = (data / "kraft-logs" / "meta.properties").exists()

    if formatted and ports_file.exists():
        if not (data / "admin-credentials.json").exists():
            raise EmbeddedKafkaError(
                "the embedded broker's data was created by an older cbx without authentication; "
                "run `cbx kafka stop --purge` to start afresh"
            )
        ports = json.loads(ports_file.read_text())
        broker_port, controller_port = int(ports["broker"]), int(ports["controller"])
        # Broker listeners may move between starts (only the controller's is in the metadata).
        tls_port = int(ports.get("tls") or _free_port())
        busy = [p for p in (broker_port, controller_port, tls_port) if not _port_free(p)]
        if busy:
            raise EmbeddedKafkaError(
                f"ports {busy} of the existing embedded broker data are taken by another process; "
                "free them or run `cbx kafka stop --purge` to start afresh"
            )
        # The configuration is always written afresh, so a newer cbx's settings take effect.
        write_private(
            props_file,
            _server_properties(data, broker_port, controller_port, tls_port, admin_password(data)),
        )
        write_private_json(
            ports_file, {"broker": broker_port, "controller": controller_port, "tls": tls_port}
        )
    else:
        shutil.rmtree(data / "kraft-logs", ignore_errors=True)
        ports_taken: set[int] = set()
        while len(ports_taken) < 3:
            ports_taken.add(_free_port())
        broker_port, controller_port, tls_port = sorted(ports_taken)
        password = _write_admin_password(data)
        write_private(
            props_file, _server_properties(data, broker_port, controller_port, tls_port, password)
        )
        write_private_json(
            ports_file, {"broker": broker_port, "controller": controller_port, "tls": tls_port}
        )
        _format(java, libs, data, _kafka_cluster_id(), password, standalone=True)

    proc = _launch(java, libs, data)
    state = BrokerState(
        bootstrap=f"127.0.0.1:{broker_port}",
        controller=f"127.0.0.1:{controller_port}",
        pid=proc.pid,
        data_dir=str(data),
        version=version,
        started_at=time.time(),
        tls_bootstrap=f"127.0.0.1:{tls_port}",
        ca_file=str(data / "tls" / "ca.pem"),
    )
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedKafkaError(
                f"the Kafka broker exited during start-up (exit code {proc.returncode})",
                _log_tail(state.log_file) or _log_tail(data / "kafka.out"),
            )
        if _accepts_connections(state.bootstrap) and _broker_ready(state):
            write_private_json(state_file(), asdict(state))
            return state
        time.sleep(0.25)
    _terminate(proc.pid)
    raise EmbeddedKafkaError(
        f"the Kafka broker did not accept clients within {_STARTUP_TIMEOUT_S:.0f}s",
        _log_tail(state.log_file) or _log_tail(data / "kafka.out"),
    )


def _prepare(version: str) -> tuple[str, Path, Path]:
    """Java, the jars, and the data folder ready for a start."""
    java = find_java()
    libs = install(version)
    data = data_dir()
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Headers at rest (case references, parties) are for the broker's user alone: the folders 0700
    # and, through the JVM's umask, every log segment it writes 0600.
    for folder in (kafka_dir(), data):
        folder.chmod(0o700)
    return java, libs, data


def _format(
    java: str, libs: Path, node: Path, cluster_id: str, password: str, *, standalone: bool
) -> None:
    """Format the KRaft storage of the node configured in ``node``, with the admin's SCRAM
    credential. ``standalone``: a lone controller that records its own endpoint; else one of the
    static voters its configuration names."""
    fmt = subprocess.run(
        _java_cmd(
            java,
            libs,
            node,
            "kafka.tools.StorageTool",
            "format",
            *(["--standalone"] if standalone else []),
            "--cluster-id",
            cluster_id,
            "--config",
            str(node / "server.properties"),
            "--add-scram",
            f"{MECHANISM}=[name={ADMIN},password={password}]",
        ),
        capture_output=True,
        text=True,
        check=False,
        umask=0o077,
    )
    if fmt.returncode != 0:
        raise EmbeddedKafkaError(
            f"formatting KRaft storage in {node} failed",
            "\n".join((fmt.stdout + fmt.stderr).splitlines()[-30:]),
        )


def _launch(
    java: str, libs: Path, node: Path, heap_default: str = "768m"
) -> subprocess.Popen[bytes]:
    """Start the node configured in ``node`` (its own session: a test's signals stay its own)."""
    out = os.fdopen(
        os.open(node / "kafka.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
    )
    try:
        return subprocess.Popen(
            _java_cmd(
                java,
                libs,
                node,
                "kafka.Kafka",
                str(node / "server.properties"),
                heap_default=heap_default,
            ),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=node,
            umask=0o077,
        )
    finally:
        out.close()


# --- A cluster of three nodes ---------------------------------------------------------------------

#: Heap of each node of a cluster (``CBX_KAFKA_HEAP`` overrides): three fit beside the tests.
CLUSTER_HEAP = "512m"


def _node_dir(node_id: int) -> Path:
    return data_dir() / f"node-{node_id}"


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _started_since(log: Path, offset: int) -> bool:
    """The node logged that it started after ``offset`` of its log (an earlier start's line, in
    a log a restart appends to, does not count)."""
    try:
        with log.open("rb") as f:
            f.seek(offset if offset <= _log_size(log) else 0)
            text = f.read().decode(errors="replace")
    except OSError:
        return False
    return "Kafka Server started" in text or "started (kafka.server.KafkaRaftServer)" in text


def _wait_started(
    procs: dict[int, subprocess.Popen[bytes]], offsets: dict[int, int], bootstraps: dict[int, str]
) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    waiting = set(procs)
    while waiting and time.monotonic() < deadline:
        for node_id in sorted(waiting):
            proc, log = procs[node_id], _node_dir(node_id) / "server.log"
            if proc.poll() is not None:
                for other in procs.values():
                    _terminate(other.pid)
                raise EmbeddedKafkaError(
                    f"Kafka node {node_id} exited during start-up (exit code {proc.returncode})",
                    _log_tail(log) or _log_tail(_node_dir(node_id) / "kafka.out"),
                )
            if _accepts_connections(bootstraps[node_id]) and _started_since(log, offsets[node_id]):
                waiting.discard(node_id)
        time.sleep(0.25)
    if waiting:
        for proc in procs.values():
            _terminate(proc.pid)
        node_id = min(waiting)
        raise EmbeddedKafkaError(
            f"Kafka node {node_id} did not accept clients within {_STARTUP_TIMEOUT_S:.0f}s",
            _log_tail(_node_dir(node_id) / "server.log"),
        )


def _start_cluster(version: str, brokers: int) -> BrokerState:
    if brokers != 3:
        raise EmbeddedKafkaError(
            f"--brokers {brokers}: the embedded Kafka runs 1 broker, or 3 (a quorum of three "
            "controllers, replication 3, min ISR 2)"
        )
    java, libs, data = _prepare(version)
    if (data / "kraft-logs").exists():
        raise EmbeddedKafkaError(
            "the embedded Kafka data here is a single broker's: start it without --brokers, "
            "or run `cbx kafka stop --purge` to start afresh"
        )
    ids = list(range(1, brokers + 1))
    ports_file = data / "ports.json"
    formatted = all((_node_dir(i) / "kraft-logs" / "meta.properties").exists() for i in ids)
    if formatted and ports_file.exists():
        ports = [dict(p) for p in json.loads(ports_file.read_text())["nodes"]]
        password = admin_password(data)
        busy = [p for n in ports for p in n.values() if not _port_free(int(p))]
        if busy:
            raise EmbeddedKafkaError(
                f"ports {busy} of the existing embedded cluster are taken by another process; "
                "free them or run `cbx kafka stop --purge` to start afresh"
            )
    else:
        for i in ids:
            shutil.rmtree(_node_dir(i), ignore_errors=True)
        taken: set[int] = set()
        while len(taken) < 3 * brokers:
            taken.add(_free_port())
        free = sorted(taken)
        ports = [
            {"broker": free[3 * k], "controller": free[3 * k + 1], "tls": free[3 * k + 2]}
            for k in range(brokers)
        ]
        password = _write_admin_password(data)
    voters = ",".join(f"{i}@127.0.0.1:{p['controller']}" for i, p in zip(ids, ports, strict=True))
    for i, p in zip(ids, ports, strict=True):
        node = _node_dir(i)
        node.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(
            node / "server.properties",
            _server_properties(
                node,
                int(p["broker"]),
                int(p["controller"]),
                int(p["tls"]),
                password,
                node_id=i,
                voters=voters,
                pki_dir=data / "tls",
            ),
        )
    write_private_json(ports_file, {"nodes": ports})
    if not formatted:
        cluster_id = _kafka_cluster_id()
        for i in ids:
            _format(java, libs, _node_dir(i), cluster_id, password, standalone=False)
    offsets = {i: _log_size(_node_dir(i) / "server.log") for i in ids}
    procs = {i: _launch(java, libs, _node_dir(i), CLUSTER_HEAP) for i in ids}
    bootstraps = {i: f"127.0.0.1:{p['broker']}" for i, p in zip(ids, ports, strict=True)}
    _wait_started(procs, offsets, bootstraps)
    state = BrokerState(
        bootstrap=",".join(bootstraps[i] for i in ids),
        controller=voters,
        pid=procs[1].pid,
        data_dir=str(data),
        version=version,
        started_at=time.time(),
        tls_bootstrap=",".join(f"127.0.0.1:{p['tls']}" for p in ports),
        ca_file=str(data / "tls" / "ca.pem"),
        brokers=brokers,
        pids=tuple(procs[i].pid for i in ids),
    )
    write_private_json(state_file(), asdict(state))
    return state


def kill_node(node_id: int, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to one node of the running cluster and, for SIGKILL, wait for it to die;
    its pid."""
    state = read_state()
    if state is None or state.brokers < node_id:
        raise EmbeddedKafkaError(f"no embedded cluster node {node_id} is running")
    pid = state.node_pids()[node_id - 1]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if sig == signal.SIGKILL:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _is_kafka_process(pid):
            time.sleep(0.05)
    return pid


def start_node(node_id: int) -> BrokerState:
    """Start one node of the cluster again (after a kill or a stop); returns when it is up."""
    state = read_state()
    if state is None or state.brokers < node_id:
        raise EmbeddedKafkaError(f"no embedded cluster with a node {node_id}")
    pids = list(state.node_pids())
    if _is_kafka_process(pids[node_id - 1]):
        return state
    node = _node_dir(node_id)
    offset = _log_size(node / "server.log")
    proc = _launch(find_java(), install(state.version), node, CLUSTER_HEAP)
    bootstrap = state.bootstrap.split(",")[node_id - 1]
    _wait_started({node_id: proc}, {node_id: offset}, {node_id: bootstrap})
    pids[node_id - 1] = proc.pid
    state = replace(state, pid=pids[0], pids=tuple(pids))
    write_private_json(state_file(), asdict(state))
    return state


def _broker_ready(state: BrokerState) -> bool:
    """A client can fetch cluster metadata (the listener is up and the broker is unfenced)."""
    log = _log_tail(state.log_file, 400)
    return "Kafka Server started" in log or "started (kafka.server.KafkaRaftServer)" in log


def _terminate(pid: int, timeout: float = _STOP_TIMEOUT_S) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_kafka_process(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _is_kafka_process(pid):
        time.sleep(0.1)


def stop(*, purge: bool = False) -> BrokerState | None:
    """Stop the embedded broker (clean shutdown, SIGKILL after 30 s); ``purge`` deletes its data."""
    state = read_state()
    if state is not None:
        alive = [pid for pid in state.node_pids() if _is_kafka_process(pid)]
        for pid in alive:  # all at once: a cluster's last nodes shut down together
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in alive:
            _terminate(pid)
        left = [pid for pid in alive if _is_kafka_process(pid)]
        if left:
            raise EmbeddedKafkaError(f"Kafka broker pid(s) {left} did not stop")
    state_file().unlink(missing_ok=True)
    if purge:
        shutil.rmtree(data_dir(), ignore_errors=True)
    return state
