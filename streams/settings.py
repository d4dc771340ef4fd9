"""The one settings class: every knob of the engine, read from JOURNEY_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_KAFKA_HOST = "127.0.0.1"


class Settings(BaseSettings):
    """Built once at an entry point (CLI, worker, tests) and passed down."""

    model_config = SettingsConfigDict(env_prefix="JOURNEY_", frozen=True, extra="ignore")

    home: Path = Field(Path(".journey"), description="data dir of the local stack")
    kafka_bootstrap: str | None = Field(
        None, description="host:port list of an existing cluster; unset = the local stack"
    )
    clickhouse_dsn: str | None = Field(
        None, description="chdb:///path (embedded) or http(s)://user:pass@host:8123/db"
    )

    # the local stack's broker
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_heap: str = "768m"
    kafka_start_timeout: float = 90.0

    # topics (EVENTS.md names by default)
    topic_ingest: str = "touchpoints.ingest"
    topic_touchpoints: str = "touchpoints"
    topic_dlq: str = "touchpoints.dlq"
    topic_friction: str = "friction"
    topic_alerts_dlq: str = "friction.alerts.dlq"
    topic_partitions: int = 4

    # the worker
    app_id: str = "journey"
    generation: int | None = Field(
        None, description="projection generation; unset = the one `journey replay` recorded"
    )
    worker_host: str = "127.0.0.1"
    worker_port: int = 6066
    dedup_window_hours: float = 168.0
    validator_batch_size: int = 2000
    sink_batch_size: int = 20000
    sink_enabled: bool = Field(True, description="run the ClickHouse sinks in this worker")
    journeys_enabled: bool = Field(True, description="run the journey projection here")
    friction_enabled: bool = Field(True, description="run the friction detectors here")
    friction_config: Path | None = Field(
        None, description="TOML file of friction rule thresholds; unset = the documented defaults"
    )
    sink_batch_seconds: float = 1.0

    # the worker's HTTP API
    api_tokens: str | None = Field(
        None,
        description="comma-separated bearer tokens the worker's HTTP API accepts; needed "
        "when JOURNEY_WORKER_HOST is not a loopback address. Clients send the first one",
    )
    health_interval_seconds: float = Field(
        5.0, gt=0, description="how often the worker checks the broker, the warehouse and "
        "its consumer groups for /health and /metrics",
    )
    health_stuck_seconds: float = Field(
        300.0, gt=0, description="a consumer group with lag whose committed offset has not "
        "moved for this long is stuck (/health fails)",
    )

    @property
    def uses_local_stack(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def bootstrap(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return f"{LOCAL_KAFKA_HOST}:{self.kafka_port}"

    # the HTTP collector (journey collector)
    collector_host: str = Field("127.0.0.1", description="address the collector binds")
    collector_port: int = 6070
    collector_write_keys: str | None = Field(
        None, description="comma-separated write keys, each `key` or `name=key`"
    )
    collector_write_keys_file: Path | None = Field(
        None, description="file of write keys, one `key` or `name=key` a line (# comments)"
    )
    collector_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest request body, after gunzip too (413)"
    )
    collector_rate_limit: float = Field(
        20_000.0, ge=0, description="events per second per write key and process; 0 = none"
    )
    collector_rate_burst_seconds: float = Field(
        2.0, gt=0, description="seconds of the rate a key may send at once"
    )
    collector_cors_origins: str = Field(
        "", description="comma-separated origins browsers may send from, or *; empty = none"
    )
    collector_send_timeout: float = Field(
        10.0, gt=0, description="seconds to wait for the broker's acks before answering 503"
    )
    collector_retry_after: int = Field(
        5, ge=1, description="seconds a client is told to wait after a 503"
    )

    @property
    def collector_url(self) -> str:
        return f"http://{self.collector_host}:{self.collector_port}"

    @property
    def warehouse_dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.home / 'warehouse').resolve()}"

    @property
    def projection_id(self) -> str:
        """Faust app id of the projections: a replay starts a new generation afresh."""
        return self.app_id if not self.generation else f"{self.app_id}-g{self.generation}"

    @property
    def api_token_list(self) -> tuple[str, ...]:
        """The tokens of JOURNEY_API_TOKENS, blanks left out."""
        return tuple(t.strip() for t in (self.api_tokens or "").split(",") if t.strip())

    @property
    def worker_url(self) -> str:
        return f"http://{self.worker_host}:{self.worker_port}"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def worker_dir(self) -> Path:
        return self.home / "worker"
