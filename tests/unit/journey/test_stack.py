"""The local stack manager's checks and bookkeeping, without starting a real broker."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from journey.errors import JourneyError, ServiceUnavailableError
from journey.settings import Settings
from journey.stack import (
    KafkaStack,
    KafkaStartError,
    MissingToolError,
    Outcome,
    PortInUseError,
    StackRecord,
    _command_line,
    _new_cluster_id,
    _port_holder,
)
from tests.ports import free_port


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own JOURNEY_* variables must not leak into these settings.
    for name in list(os.environ):
        if name.startswith("JOURNEY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket that holds a loopback port, as another program would."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def make_settings(home: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home,
        "kafka_bootstrap": None,
        "kafka_port": free_port(),
        "kafka_controller_port": free_port(),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def fake_java(bin_dir: Path, version: str = "17.0.9") -> None:
    """A `java` that only answers `-version`, so that no JVM starts."""
    bin_dir.mkdir(exist_ok=True)
    java = bin_dir / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2024-01-16' >&2\n")
    java.chmod(0o755)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def spawn_impostor(stack: KafkaStack) -> subprocess.Popen[bytes]:
    """A sleeping process whose command line passes for this home's broker."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", str(stack.config_file)]
    )
    # Popen returns as soon as exec begins; /proc shows the new arguments a moment later.
    deadline = time.monotonic() + 5
    while "kafka.Kafka" not in (_command_line(proc.pid) or []):
        assert time.monotonic() < deadline, "the impostor never showed its command line"
        time.sleep(0.01)
    return proc


def write_record(stack: KafkaStack, pid: int) -> None:
    stack.dir.mkdir(parents=True, exist_ok=True)
    record = StackRecord(
        pid=pid,
        bootstrap=stack.settings.bootstrap,
        port=stack.settings.kafka_port,
        controller_port=stack.settings.kafka_controller_port,
        config=str(stack.config_file),
        log_file=str(stack.log_file),
        console_file=str(stack.console_file),
        data_dir=str(stack.data_dir),
        started_at=0.0,
    )
    stack.state_file.write_text(json.dumps(record.__dict__))


def one_line(exc: pytest.ExceptionInfo[JourneyError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_java_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MissingToolError) as exc:
        KafkaStack(make_settings(tmp_path)).up()
    message = one_line(exc)
    assert message.startswith("java not found on PATH")
    assert "Java 17+" in message
    assert "JOURNEY_KAFKA_BOOTSTRAP" in message


def test_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java(tmp_path / "bin", version="11.0.22")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MissingToolError) as exc:
        KafkaStack(make_settings(tmp_path)).up()
    assert "Java 11" in one_line(exc)


@pytest.mark.parametrize(
    ("setting", "name"),
    [
        ("kafka_port", "JOURNEY_KAFKA_PORT"),
        ("kafka_controller_port", "JOURNEY_KAFKA_CONTROLLER_PORT"),
    ],
)
def test_taken_port_names_port_holder_and_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: socket.socket,
    setting: str,
    name: str,
) -> None:
    fake_java(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    port = listener.getsockname()[1]
    stack = KafkaStack(make_settings(tmp_path, **{setting: port}))
    with pytest.raises(PortInUseError) as exc:
        stack.up()
    message = one_line(exc)
    assert exc.value.port == port
    assert f"port {port}" in message
    assert name in message
    if Path("/proc/net/tcp").exists():
        assert f"pid {os.getpid()}" in message
    # Nothing was fetched or started.
    assert not stack.libs_dir.exists()
    assert not stack.state_file.exists()


def test_port_holder_finds_this_process(listener: socket.socket) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc")
    holder = _port_holder(listener.getsockname()[1])
    assert holder is not None
    assert holder[0] == os.getpid()


def test_stale_record_is_cleaned_by_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: socket.socket
) -> None:
    fake_java(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    # The taken port stops `up` right after the stale record is dealt with.
    stack = KafkaStack(make_settings(tmp_path, kafka_port=listener.getsockname()[1]))
    write_record(stack, dead_pid())
    with pytest.raises(PortInUseError):
        stack.up()
    assert not stack.state_file.exists()


def test_stale_record_reads_as_not_running_and_down_cleans_it(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path))
    write_record(stack, dead_pid())
    assert not stack.status().running
    assert stack.down() is None
    assert not stack.state_file.exists()


def test_live_pid_that_is_not_our_broker_is_stale(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path))
    write_record(stack, os.getpid())  # alive, but no kafka.Kafka on our config
    assert not stack.status().running
    assert stack.down() is None
    assert not stack.state_file.exists()
    assert stack.down() is None  # twice is harmless


def test_down_and_status_create_nothing(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path / "home"))
    assert not stack.status().running
    assert stack.down() is None
    assert stack.reset() is None
    assert not (tmp_path / "home").exists()


def test_unreadable_record_is_dropped(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path))
    stack.dir.mkdir(parents=True)
    stack.state_file.write_text("{not json")
    assert stack.down() is None
    assert not stack.state_file.exists()


def test_down_stops_exactly_the_recorded_process(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path))
    # Looks like our broker to the command-line check: kafka.Kafka <our config>.
    impostor = spawn_impostor(stack)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_record(stack, impostor.pid)
        status = stack.status()
        assert status.running and status.record is not None
        assert status.record.pid == impostor.pid
        assert not status.answers  # nothing listens on the port
        stopped = stack.down()
        assert stopped is not None and not stopped.forced
        assert impostor.wait(timeout=5) is not None
        assert bystander.poll() is None
        assert not stack.state_file.exists()
    finally:
        for proc in (impostor, bystander):
            proc.kill()
            proc.wait()


def test_running_but_silent_broker_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Should the record be misread as stale, the fake java fails fast instead of a real start.
    fake_java(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    stack = KafkaStack(make_settings(tmp_path, kafka_start_timeout=0.3))
    impostor = spawn_impostor(stack)
    try:
        write_record(stack, impostor.pid)
        with pytest.raises(KafkaStartError) as exc:
            stack.up()
        message = one_line(exc)
        assert f"pid {impostor.pid}" in message
        assert str(stack.log_file) in message
    finally:
        impostor.kill()
        impostor.wait()


def test_server_properties_has_the_single_node_settings(tmp_path: Path) -> None:
    stack = KafkaStack(
        make_settings(tmp_path, kafka_port=29092, kafka_controller_port=29093, topic_partitions=6)
    )
    text = stack.render_server_properties()
    props = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )
    expected = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": "1@127.0.0.1:29093",
        "listeners": "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093",
        "advertised.listeners": "PLAINTEXT://127.0.0.1:29092",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": "33554432",
        "auto.create.topics.enable": "true",
        "num.partitions": "6",
        "log.dirs": str(stack.data_dir),
    }
    assert {key: props.get(key) for key in expected} == expected
    # Topic retention is the engine's business, per topic.
    assert not any(key.startswith("log.retention") for key in props)
    assert stack.data_dir.is_absolute()


def test_log4j_config_writes_the_broker_log(tmp_path: Path) -> None:
    stack = KafkaStack(make_settings(tmp_path))
    text = stack.render_log4j_properties()
    assert f"fileName = {stack.log_file}" in text
    assert "rootLogger.level = info" in text  # the ready line is logged at INFO


def test_external_bootstrap_provisions_nothing(tmp_path: Path, listener: socket.socket) -> None:
    bootstrap = f"127.0.0.1:{listener.getsockname()[1]}"
    stack = KafkaStack(make_settings(tmp_path, kafka_bootstrap=bootstrap))
    result = stack.up()
    assert result.outcome is Outcome.EXTERNAL
    assert result.status.external and result.status.answers
    assert result.status.bootstrap == bootstrap
    assert not (tmp_path / "kafka").exists()
    assert stack.down() is None


def test_external_bootstrap_that_does_not_answer(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    stack = KafkaStack(make_settings(tmp_path, kafka_bootstrap=bootstrap))
    assert not stack.status().answers
    with pytest.raises(ServiceUnavailableError) as exc:
        stack.up()
    message = one_line(exc)
    assert bootstrap in message and "JOURNEY_KAFKA_BOOTSTRAP" in message
    assert not (tmp_path / "kafka").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"kafka_heap": "lots"}, "JOURNEY_KAFKA_HEAP"),
        ({"kafka_port": 29092, "kafka_controller_port": 29092}, "two different ports"),
        ({"kafka_port": 70000}, "JOURNEY_KAFKA_PORT"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, overrides: dict[str, object], needle: str) -> None:
    with pytest.raises(JourneyError) as exc:
        KafkaStack(make_settings(tmp_path, **overrides)).up()
    assert needle in one_line(exc)


def test_cluster_id_is_a_kafka_uuid() -> None:
    for _ in range(50):
        text = _new_cluster_id()
        assert len(text) == 22 and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


def test_cli_status_and_down_when_nothing_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from journey.cli import app
    from journey.cli import stack as _  # noqa: F401  (registers `journey stack`)

    monkeypatch.setenv("JOURNEY_HOME", str(tmp_path))
    monkeypatch.setenv("JOURNEY_KAFKA_PORT", "29092")
    runner = CliRunner()
    result = runner.invoke(app, ["stack", "status"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output
    result = runner.invoke(app, ["stack", "down"])
    assert result.exit_code == 0, result.output
    assert "not running" in result.output
