"""`journey stack up|down|status|reset`: the local Kafka broker, or a check of an external one."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console

from journey.cli import app
from journey.errors import ConfigurationError
from journey.settings import Settings
from journey.stack import KafkaStack, Outcome, StackStatus, StopResult

stack_app = typer.Typer(
    name="stack",
    help="The local Kafka broker, or a check of the cluster JOURNEY_KAFKA_BOOTSTRAP names.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

# soft_wrap: paths stay whole, on one line, whatever the terminal's width.
console = Console(highlight=False, soft_wrap=True)


def _stack() -> KafkaStack:
    try:
        # model_validate rather than Settings(): mypy, without pydantic's plugin, would
        # call the optional fields required.
        settings = Settings.model_validate({})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "JOURNEY_" + "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(f"{name}: {first['msg']}") from exc
    return KafkaStack(settings, console=Console(stderr=True, soft_wrap=True))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _show_local(status: StackStatus) -> None:
    record = status.record
    if record is None:
        return
    version = f"Kafka {record.version}" if record.version else "Kafka"
    uptime = _duration(status.uptime or 0.0)
    console.print(f"  {version}, pid {record.pid}, up {uptime}")
    console.print(f"  bootstrap  {record.bootstrap} (controller port {record.controller_port})")
    console.print(f"  log        {record.log_file}")
    console.print(f"  data       {record.data_dir}")


def _show_stopped(stopped: StopResult) -> None:
    how = "killed after it ignored SIGTERM" if stopped.forced else "stopped"
    console.print(f"[green]Kafka {how}[/green] (pid {stopped.record.pid}, {stopped.seconds:.1f}s)")


@stack_app.command()
def up(
    fresh: bool = typer.Option(False, "--fresh", help="Delete the broker's data first."),
) -> None:
    """Start the local broker, fetching and formatting what is missing; harmless if it runs."""
    result = _stack().up(fresh=fresh)
    status = result.status
    for note in result.notes:
        console.print(f"[dim]- {note}[/dim]")
    if result.outcome is Outcome.EXTERNAL:
        console.print(
            f"[green]External Kafka at {status.bootstrap} answers[/green]; nothing provisioned "
            "(JOURNEY_KAFKA_BOOTSTRAP is set)"
        )
        return
    if result.outcome is Outcome.ALREADY_RUNNING:
        console.print(f"[green]Kafka already running[/green] on {status.bootstrap}")
    else:
        console.print(
            f"[green]Kafka started[/green] on {status.bootstrap} in {result.seconds:.1f}s"
        )
    _show_local(status)


@stack_app.command()
def down() -> None:
    """Stop the local broker this home started."""
    stack = _stack()
    if not stack.settings.uses_local_stack:
        console.print(
            f"Kafka at {stack.settings.bootstrap} is external (JOURNEY_KAFKA_BOOTSTRAP): "
            "nothing to stop"
        )
        return
    stopped = stack.down()
    if stopped is None:
        console.print(f"Kafka is not running (home {stack.dir})")
        return
    _show_stopped(stopped)


@stack_app.command()
def status() -> None:
    """Show what runs where."""
    stack = _stack()
    current = stack.status()
    if current.external:
        state = "[green]answers[/green]" if current.answers else "[red]does not answer[/red]"
        console.print(f"External Kafka at {current.bootstrap} (JOURNEY_KAFKA_BOOTSTRAP): {state}")
        return
    if not current.running:
        console.print(
            f"Kafka is not running (would listen on {current.bootstrap}, home {stack.dir})"
        )
        return
    answers = "" if current.answers else " [red]but its port does not answer[/red]"
    console.print(f"[green]Kafka running[/green] on {current.bootstrap}{answers}")
    _show_local(current)


@stack_app.command()
def reset() -> None:
    """Stop the local broker and delete its data (topics and offsets); the jars stay."""
    stack = _stack()
    had_data = stack.data_dir.exists()
    stopped = stack.reset()
    if stopped is not None:
        _show_stopped(stopped)
    console.print(f"Deleted {stack.data_dir}" if had_data else f"No data in {stack.dir}")
