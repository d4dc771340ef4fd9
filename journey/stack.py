"""The local stack: a single-node Apache Kafka broker (KRaft) run from Maven Central's jars."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from rich.console import Console

from journey.errors import ConfigurationError, ServiceUnavailableError
from journey.settings import LOCAL_KAFKA_HOST, Settings

MIN_JAVA = 17  # Kafka 4.x brokers need Java 17
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL_MAIN = "kafka.tools.StorageTool"
READY_LINE = "Kafka Server started"
STOP_TIMEOUT = 30.0
KILL_TIMEOUT = 5.0
MAVEN_TIMEOUT = 900.0
FORMAT_TIMEOUT = 120.0
PROBE_TIMEOUT = 3.0
POLL_INTERVAL = 0.2

JAVA_HINT = "install a Java 17+ JDK (e.g. apt-get install openjdk-17-jre-headless)"
MAVEN_HINT = "install Apache Maven (e.g. apt-get install maven)"
EXTERNAL_HINT = "or set JOURNEY_KAFKA_BOOTSTRAP to use an existing cluster"

log = logging.getLogger(__name__)


class MissingToolError(ConfigurationError):
    """`java` or `mvn` is missing from PATH or too old."""


class PortInUseError(ConfigurationError):
    """A port the local broker needs is taken by another process."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


class KafkaStartError(ServiceUnavailableError):
    """Fetching the jars, formatting the storage or starting the broker failed."""


class Outcome(enum.Enum):
    STARTED = "started"
    ALREADY_RUNNING = "already running"
    EXTERNAL = "external"


@dataclass(frozen=True)
class StackRecord:
    """What `stack.json` keeps about the broker this home started."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    config: str
    log_file: str
    console_file: str
    data_dir: str
    started_at: float
    version: str | None = None


@dataclass(frozen=True)
class StackStatus:
    """What runs where: the local broker, or the external cluster the settings name."""

    bootstrap: str
    external: bool
    running: bool  # our broker process is alive; always False for an external cluster
    answers: bool  # the bootstrap accepts TCP connections
    record: StackRecord | None = None

    @property
    def uptime(self) -> float | None:
        return None if self.record is None else max(0.0, time.time() - self.record.started_at)


@dataclass(frozen=True)
class UpResult:
    outcome: Outcome
    status: StackStatus
    seconds: float
    notes: tuple[str, ...] = ()  # provisioning steps taken, for people to read


@dataclass(frozen=True)
class StopResult:
    record: StackRecord
    forced: bool  # SIGKILL was needed
    seconds: float


class KafkaStack:
    """Provisions, starts, checks and stops the broker that lives under `<home>/kafka/`.

    Every file sits under `settings.kafka_dir`; `stack.json` there names the one
    process `down` may stop. Without a console the stack works silently (fixtures).
    """

    def __init__(self, settings: Settings, console: Console | None = None) -> None:
        self.settings = settings
        self.console = console
        # Absolute: the config path is part of the java command line that tells our
        # broker apart from any other java process.
        self.dir = settings.kafka_dir.expanduser().resolve()

    # -- files --------------------------------------------------------------------
    @property
    def libs_dir(self) -> Path:
        return self.dir / "libs"

    @property
    def libs_stamp(self) -> Path:
        return self.libs_dir / ".pom.sha256"

    @property
    def pom_file(self) -> Path:
        return self.dir / "pom.xml"

    @property
    def maven_log(self) -> Path:
        return self.dir / "maven.log"

    @property
    def config_file(self) -> Path:
        return self.dir / "server.properties"

    @property
    def log4j_file(self) -> Path:
        return self.dir / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.dir / "broker.log"

    @property
    def console_file(self) -> Path:
        return self.dir / "console.log"

    @property
    def format_log(self) -> Path:
        return self.dir / "format.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def cluster_id_file(self) -> Path:
        return self.dir / "cluster.id"

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.dir / "stack.lock"

    # -- public -------------------------------------------------------------------
    def up(self, *, fresh: bool = False) -> UpResult:
        """Start the broker (provisioning what is missing) or confirm it already runs.

        With an external bootstrap nothing is provisioned: it is only checked to answer.
        `fresh` stops the broker and deletes its data first.
        """
        began = time.monotonic()
        if not self.settings.uses_local_stack:
            status = self.status()
            if not status.answers:
                raise ServiceUnavailableError(
                    f"Kafka at {status.bootstrap} (JOURNEY_KAFKA_BOOTSTRAP) does not accept "
                    "connections: start that cluster, or unset JOURNEY_KAFKA_BOOTSTRAP to "
                    "use the local stack"
                )
            return UpResult(Outcome.EXTERNAL, status, time.monotonic() - began)

        self._validate_settings()
        with self._locked():
            notes: list[str] = []
            if fresh and self._reset_locked() is not None:
                notes.append("stopped the running broker")
            if fresh:
                notes.append("deleted the broker's data")
            record = self._live_record(notes)
            if record is not None:
                self._await_running(record)
                return UpResult(
                    Outcome.ALREADY_RUNNING,
                    self._local_status(record),
                    time.monotonic() - began,
                    tuple(notes),
                )
            java = self._java()
            self._check_ports()
            if self._provision_libs():
                notes.append(f"fetched the Kafka jars into {self.libs_dir}")
            self._write_configs()
            if self._format_storage(java):
                notes.append(f"formatted KRaft storage in {self.data_dir}")
            record = self._start(java)
            notes.append(f"started broker pid {record.pid}")
            return UpResult(
                Outcome.STARTED,
                self._local_status(record),
                time.monotonic() - began,
                tuple(notes),
            )

    def down(self) -> StopResult | None:
        """Stop exactly the recorded broker; None when none was running."""
        if not self.settings.uses_local_stack or not self.dir.exists():
            return None
        with self._locked():
            return self._down_locked()

    def reset(self) -> StopResult | None:
        """Stop the broker and delete its data (topics, offsets, cluster id); jars stay."""
        if not self.settings.uses_local_stack:
            raise ConfigurationError(
                f"JOURNEY_KAFKA_BOOTSTRAP points at an external cluster "
                f"({self.settings.bootstrap}): `journey stack reset` only deletes the local "
                "stack's data"
            )
        if not self.dir.exists():
            return None
        with self._locked():
            return self._reset_locked()

    def status(self) -> StackStatus:
        if not self.settings.uses_local_stack:
            bootstrap = self.settings.bootstrap
            return StackStatus(bootstrap, True, False, _bootstrap_answers(bootstrap))
        record = self._read_record()
        if record is None or not self._is_our_broker(record.pid):
            return StackStatus(self.settings.bootstrap, False, False, False)
        return self._local_status(record)

    def render_server_properties(self) -> str:
        return _render(
            "server.properties",
            port=self.settings.kafka_port,
            controller_port=self.settings.kafka_controller_port,
            data_dir=self.data_dir,
            partitions=self.settings.topic_partitions,
        )

    def render_log4j_properties(self) -> str:
        return _render("log4j2.properties", log_file=self.log_file)

    # -- steps of `up` --------------------------------------------------------------
    def _validate_settings(self) -> None:
        s = self.settings
        for name, port in (
            ("JOURNEY_KAFKA_PORT", s.kafka_port),
            ("JOURNEY_KAFKA_CONTROLLER_PORT", s.kafka_controller_port),
        ):
            if not 0 < port < 65536:
                raise ConfigurationError(f"{name}={port} is not a TCP port: use 1-65535")
        if s.kafka_port == s.kafka_controller_port:
            raise ConfigurationError(
                f"JOURNEY_KAFKA_PORT and JOURNEY_KAFKA_CONTROLLER_PORT are both {s.kafka_port}: "
                "the broker needs two different ports"
            )
        if not re.fullmatch(r"\d+[kKmMgG]?", s.kafka_heap):
            raise ConfigurationError(
                f"JOURNEY_KAFKA_HEAP={s.kafka_heap!r} is not a JVM heap size: use e.g. 768m or 1g"
            )
        if s.topic_partitions < 1:
            raise ConfigurationError(
                f"JOURNEY_TOPIC_PARTITIONS={s.topic_partitions}: use 1 or more"
            )

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise MissingToolError(f"java not found on PATH: {JAVA_HINT}, {EXTERNAL_HINT}")
        major = _java_major(java)
        if major is not None and major < MIN_JAVA:
            raise MissingToolError(
                f"{java} is Java {major} but Kafka 4.x needs Java {MIN_JAVA}+: {JAVA_HINT} "
                "and put it first on PATH"
            )
        return java

    def _check_ports(self) -> None:
        for name, port in (
            ("JOURNEY_KAFKA_PORT", self.settings.kafka_port),
            ("JOURNEY_KAFKA_CONTROLLER_PORT", self.settings.kafka_controller_port),
        ):
            if _port_free(port):
                continue
            holder = _port_holder(port)
            if holder is not None and self._is_our_broker(holder[0]):
                # stack.json was lost (deleted by hand, or a crash between start and write).
                raise PortInUseError(
                    f"port {port} is held by this home's own Kafka broker (pid {holder[0]}) "
                    f"that {self.state_file.name} no longer records: stop it with "
                    f"`kill {holder[0]}`, then run `journey stack up` again",
                    port,
                )
            by = f" by pid {holder[0]} ({holder[1]})" if holder else ""
            raise PortInUseError(
                f"port {port} on {LOCAL_KAFKA_HOST} is already in use{by}: stop that process "
                f"or set {name} to a free port",
                port,
            )

    def _provision_libs(self) -> bool:
        """Copy the pom's runtime jars into libs/ unless they match the pom already."""
        pom = _resource("pom.xml").encode()
        digest = hashlib.sha256(pom).hexdigest()
        if self._libs_ready(digest):
            return False
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MissingToolError(
                f"mvn not found on PATH: {MAVEN_HINT}; it fetches the Kafka jars once into "
                f"{self.libs_dir}, {EXTERNAL_HINT}"
            )
        self.pom_file.write_bytes(pom)
        # Maven fills a side folder that replaces libs/ only when complete, so that an
        # interrupted run or an old Kafka version never leaves a mixed classpath.
        partial = self.dir / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        command = [
            mvn, "-B", "-q", "-f", str(self.pom_file),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]  # fmt: skip
        with self._step("Fetching the Kafka jars with Maven (first run only)..."):
            code = _run_logged(command, self.maven_log, MAVEN_TIMEOUT, cwd=self.dir)
        if code != 0:
            shutil.rmtree(partial, ignore_errors=True)
            detail = _last_line(self.maven_log, r"\[ERROR\]")
            raise KafkaStartError(
                f"maven could not fetch the Kafka jars ({_exit_text(code)}){_colon(detail)}; "
                f"see {self.maven_log} (network access to Maven Central or a mirror in "
                "~/.m2/settings.xml is needed once)"
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        partial.rename(self.libs_dir)
        self.libs_stamp.write_text(digest + "\n")
        return True

    def _libs_ready(self, digest: str) -> bool:
        try:
            stamp = self.libs_stamp.read_text().strip()
        except OSError:
            return False
        return stamp == digest and _kafka_version(self.libs_dir) is not None

    def _write_configs(self) -> None:
        _write_if_changed(self.config_file, self.render_server_properties())
        _write_if_changed(self.log4j_file, self.render_log4j_properties())

    def _format_storage(self, java: str) -> bool:
        """Format the KRaft log dir once; its meta.properties marks it as done."""
        if (self.data_dir / "meta.properties").exists():
            return False
        cluster_id = self._cluster_id()
        command = [
            java, "-cp", self._classpath(), STORAGE_TOOL_MAIN, "format",
            "-t", cluster_id, "-c", str(self.config_file), "--ignore-formatted",
        ]  # fmt: skip
        with self._step("Formatting the broker's storage..."):
            code = _run_logged(command, self.format_log, FORMAT_TIMEOUT, cwd=self.dir)
        if code != 0:
            detail = _last_line(self.format_log, r"(?i)error|exception")
            raise KafkaStartError(
                f"formatting Kafka storage in {self.data_dir} failed ({_exit_text(code)})"
                f"{_colon(detail)}; see {self.format_log}"
            )
        return True

    def _cluster_id(self) -> str:
        with contextlib.suppress(OSError):
            stored = self.cluster_id_file.read_text().strip()
            if stored:
                return stored
        cluster_id = _new_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _classpath(self) -> str:
        # Java expands the trailing star itself (to every jar in the folder).
        return f"{self.libs_dir}/*"

    def _start(self, java: str) -> StackRecord:
        s = self.settings
        command = [
            java,
            f"-Xmx{s.kafka_heap}",
            # A broker out of memory should die and say so, not limp on.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            self._classpath(),
            BROKER_MAIN,
            str(self.config_file),
        ]
        # log4j appends to broker.log across runs: only what follows this offset is ours.
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.console_file.open("wb") as console_out:
            process = subprocess.Popen(
                command,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=console_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI and ignores its Ctrl-C
                close_fds=True,
            )
        record = StackRecord(
            pid=process.pid,
            bootstrap=s.bootstrap,
            port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            config=str(self.config_file),
            log_file=str(self.log_file),
            console_file=str(self.console_file),
            data_dir=str(self.data_dir),
            started_at=time.time(),
            version=_kafka_version(self.libs_dir),
        )
        # Recorded before the wait so that an interrupted `up` still leaves `down` a pid.
        self._write_record(record)
        try:
            with self._step(f"Starting Kafka on {record.bootstrap}..."):
                self._wait_ready(record, process, log_offset)
        except BaseException:
            self._terminate(record.pid)
            self.state_file.unlink(missing_ok=True)
            raise
        return record

    def _wait_ready(
        self, record: StackRecord, process: subprocess.Popen[bytes], log_offset: int
    ) -> None:
        """Wait for the ready line, then for the port, then for a metadata answer."""
        timeout = self.settings.kafka_start_timeout
        deadline = time.monotonic() + timeout
        seen_ready_line = False
        while True:
            code = process.poll()
            if code is not None:
                detail = _last_line(self.log_file, r"\bERROR\b", log_offset) or _last_line(
                    self.console_file, r"\S"
                )
                raise KafkaStartError(
                    f"the Kafka broker exited while starting ({_exit_text(code)})"
                    f"{_colon(detail)}; see {self.log_file} and {self.console_file}"
                )
            if not seen_ready_line:
                seen_ready_line = _file_contains(self.log_file, READY_LINE, log_offset)
            if seen_ready_line and self._answers(record):
                return
            if time.monotonic() >= deadline:
                raise KafkaStartError(
                    f"the Kafka broker did not become ready on {record.bootstrap} within "
                    f"{timeout:g}s and was stopped: see {self.log_file}; on a slow machine "
                    "raise JOURNEY_KAFKA_START_TIMEOUT"
                )
            time.sleep(POLL_INTERVAL)

    def _await_running(self, record: StackRecord) -> None:
        """A recorded broker that lives: give it the start timeout to answer."""
        deadline = time.monotonic() + self.settings.kafka_start_timeout
        while not self._answers(record):
            if not _pid_alive(record.pid):
                self.state_file.unlink(missing_ok=True)
                raise KafkaStartError(
                    f"the Kafka broker (pid {record.pid}) exited before it answered: see "
                    f"{record.log_file}, then run `journey stack up` again"
                )
            if time.monotonic() >= deadline:
                raise KafkaStartError(
                    f"the Kafka broker (pid {record.pid}) runs but does not answer on "
                    f"{record.bootstrap}: see {record.log_file}; restart it with "
                    "`journey stack down` then `journey stack up`"
                )
            time.sleep(POLL_INTERVAL)

    def _answers(self, record: StackRecord) -> bool:
        return _port_answers(LOCAL_KAFKA_HOST, record.port) and _metadata_answers(record.bootstrap)

    # -- stopping -------------------------------------------------------------------
    def _down_locked(self) -> StopResult | None:
        record = self._live_record([])
        if record is None:
            return None
        began = time.monotonic()
        forced = self._terminate(record.pid)
        self.state_file.unlink(missing_ok=True)
        return StopResult(record, forced, time.monotonic() - began)

    def _reset_locked(self) -> StopResult | None:
        stopped = self._down_locked()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.cluster_id_file.unlink(missing_ok=True)
        return stopped

    def _terminate(self, pid: int) -> bool:
        """SIGTERM (a clean shutdown flushes logs), SIGKILL after STOP_TIMEOUT; True if killed."""
        if not _signal(pid, signal.SIGTERM):
            return False
        if _wait_gone(pid, STOP_TIMEOUT):
            return False
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, KILL_TIMEOUT)
        return True

    # -- stack.json ---------------------------------------------------------------
    def _read_record(self) -> StackRecord | None:
        try:
            data: dict[str, Any] = json.loads(self.state_file.read_text())
            return StackRecord(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable %s", self.state_file)
            return None

    def _write_record(self, record: StackRecord) -> None:
        temporary = self.state_file.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
        temporary.replace(self.state_file)

    def _live_record(self, notes: list[str]) -> StackRecord | None:
        """The recorded broker if it still runs; a stale or broken record is removed."""
        if not self.state_file.exists():
            return None
        record = self._read_record()
        if record is not None and self._is_our_broker(record.pid):
            return record
        self.state_file.unlink(missing_ok=True)
        if record is not None:
            notes.append(f"removed stale {self.state_file.name} (pid {record.pid} is gone)")
        return None

    def _is_our_broker(self, pid: int) -> bool:
        """Alive, and a java running kafka.Kafka on this home's config (pids get reused)."""
        if not _pid_alive(pid):
            return False
        args = _command_line(pid)
        if args is None:
            return False
        return BROKER_MAIN in args and str(self.config_file) in args

    def _local_status(self, record: StackRecord) -> StackStatus:
        return StackStatus(
            bootstrap=record.bootstrap,
            external=False,
            running=True,
            answers=_port_answers(LOCAL_KAFKA_HOST, record.port),
            record=record,
        )

    # -- plumbing -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Parallel test sessions or two shells may run `up` at once: one provisions,
        # the other then finds it running.
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _step(self, message: str) -> contextlib.AbstractContextManager[Any]:
        if self.console is None:
            return contextlib.nullcontext()
        return self.console.status(message)


def ensure_kafka(settings: Settings) -> str:
    """Make sure Kafka answers (starting the local broker if needed); return the bootstrap."""
    return KafkaStack(settings).up().status.bootstrap


# -- helpers without state ------------------------------------------------------------
def _resource(name: str) -> str:
    return resources.files("journey").joinpath("resources", "kafka", name).read_text()


def _render(template: str, **values: object) -> str:
    return Template(_resource(template)).substitute({k: str(v) for k, v in values.items()})


def _write_if_changed(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    path.write_text(text)


def _new_cluster_id() -> str:
    """A Kafka Uuid in its text form: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka refuses ids that start with '-' (they read as command-line options).
        if not text.startswith("-"):
            return text


def _kafka_version(libs: Path) -> str | None:
    for jar in sorted(libs.glob("kafka_2.13-*.jar")):
        return jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
    return None


def _java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves 1.x.
    return int(match.group(2) or 0) if major == 1 else major


def _run_logged(command: list[str], log_path: Path, timeout: float, cwd: Path) -> int | None:
    """Run to completion with output in log_path; the exit code, None on timeout."""
    with log_path.open("wb") as out:
        try:
            return subprocess.run(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            return None


def _exit_text(code: int | None) -> str:
    if code is None:
        return "timed out"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _colon(detail: str | None) -> str:
    return f": {detail}" if detail else ""


def _last_line(path: Path, pattern: str, offset: int = 0, limit: int = 200) -> str | None:
    """The last line matching pattern, flattened to one short line (for error messages)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    found = [line.strip() for line in text.splitlines() if re.search(pattern, line)]
    if not found:
        return None
    line = " ".join(found[-1].split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _file_contains(path: Path, needle: str, offset: int) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return needle.encode() in handle.read()
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As Kafka's own listener does: a TIME_WAIT leftover is no obstacle.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOCAL_KAFKA_HOST, port))
        except OSError:
            return False
    return True


def _port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _bootstrap_answers(bootstrap: str) -> bool:
    """Whether any host:port of a bootstrap list accepts a TCP connection."""
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:9092
        if host and port.isdigit() and _port_answers(host, int(port), timeout=2.0):
            return True
    return False


def _port_holder(port: int) -> tuple[int, str] | None:
    """(pid, name) of the process listening on port, when /proc lets us see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            # sl local_address rem_address st ... inode; state 0A = LISTEN
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    name = (proc / "comm").read_text().strip()
                    return int(proc.name), name
        except OSError:  # gone, or another user's process
            continue
    return None


def _command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
        # No /proc (macOS): ask ps, at the price of a fork.
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
        )
        return out.stdout.split() if out.returncode == 0 else None
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pid_alive(pid: int) -> bool:
    # A broker started by this very process turns into a zombie when it dies: reap it.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A dead broker whose parent has not reaped it yet (a container's PID 1 may never).
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _signal(pid: int, signum: signal.Signals) -> bool:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


# -- the one real request: a metadata round trip through aiokafka ----------------------
class _SameThreadFilter(logging.Filter):
    """Drops the records the readiness probe's own thread logs (expected failures)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread_id


async def _broker_count(bootstrap: str) -> int:
    from aiokafka.client import AIOKafkaClient  # heavy client, needed only for this probe

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id="journey-stack",
        request_timeout_ms=int(PROBE_TIMEOUT * 1000),
    )
    try:
        await asyncio.wait_for(client.bootstrap(), PROBE_TIMEOUT + 1)
        # A broker still fenced by the controller is left out of the answer.
        return len(client.cluster.brokers())
    finally:
        await client.close()


def _probe(bootstrap: str) -> bool:
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.client", "aiokafka.conn")]
    quiet = _SameThreadFilter(threading.get_ident())
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        return asyncio.run(_broker_count(bootstrap)) > 0
    except Exception as exc:  # not ready yet is an expected answer here
        log.debug("metadata probe of %s failed: %r", bootstrap, exc)
        return False
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _metadata_answers(bootstrap: str) -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _probe(bootstrap)
    # Called from inside an event loop (async fixtures): probe on a private loop.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_probe, bootstrap).result()
