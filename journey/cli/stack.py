"""`journey stack up|down|status|reset`: the local Kafka broker, or a check of an external one."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.markup import escape

from journey.cli import app
from journey.errors import ConfigurationError
from journey.output import make_console
from journey.settings import Settings
from journey.stack import KafkaStack, Outcome, StackStatus, StopResult

stack_app = typer.Typer(
    name="stack",
    help="The local Kafka broker, or a check of the cluster JOURNEY_KAFKA_BOOTSTRAP names.",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")



def _say(text: str, *, markup: bool = False) -> None:
    # soft_wrap: paths stay whole, on one line, whatever the terminal's width. Paths and
    # addresses are data: markup only where the line says so, with its data escaped.
    make_console(soft_wrap=True).print(text, markup=markup)


def _stack() -> KafkaStack:
    try:
        # model_validate rather than Settings(): mypy, without pydantic's plugin, would
        # call the optional fields required.
        settings = Settings.model_validate({})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "JOURNEY_" + "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigurationError(f"{name}: {first['msg']}") from exc
    return KafkaStack(settings, console=make_console(stderr=True, soft_wrap=True))


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
    _say(f"  {version}, pid {record.pid}, up {uptime}")
    _say(f"  bootstrap  {record.bootstrap} (controller port {record.controller_port})")
    _say(f"  log        {record.log_file}")
    _say(f"  data       {record.data_dir}")


def _show_stopped(stopped: StopResult) -> None:
    how = "killed after it ignored SIGTERM" if stopped.forced else "stopped"
    _say(f"[green]Kafka {how}[/green] (pid {stopped.record.pid}, {stopped.seconds:.1f}s)",
         markup=True)


@stack_app.command()
def up(
    fresh: bool = typer.Option(False, "--fresh", help="Delete the broker's data first."),
) -> None:
    """Start the local broker, fetching and formatting what is missing; harmless if it runs."""
    result = _stack().up(fresh=fresh)
    status = result.status
    for note in result.notes:
        _say(f"[dim]- {escape(note)}[/dim]", markup=True)
    if result.outcome is Outcome.EXTERNAL:
        _say(
            f"[green]External Kafka at {escape(status.bootstrap)} answers[/green]; nothing "
            "provisioned (JOURNEY_KAFKA_BOOTSTRAP is set)", markup=True,
        )
        return
    if result.outcome is Outcome.ALREADY_RUNNING:
        _say(f"[green]Kafka already running[/green] on {escape(status.bootstrap)}", markup=True)
    else:
        _say(f"[green]Kafka started[/green] on {escape(status.bootstrap)} in "
             f"{result.seconds:.1f}s", markup=True)
    _show_local(status)


@stack_app.command()
def down() -> None:
    """Stop the local broker this home started."""
    stack = _stack()
    if not stack.settings.uses_local_stack:
        _say(f"Kafka at {stack.settings.bootstrap} is external (JOURNEY_KAFKA_BOOTSTRAP): "
             "nothing to stop")
        return
    stopped = stack.down()
    if stopped is None:
        _say(f"Kafka is not running (home {stack.dir})")
        return
    _show_stopped(stopped)


@stack_app.command()
def status() -> None:
    """Show what runs where."""
    stack = _stack()
    current = stack.status()
    if current.external:
        state = "[green]answers[/green]" if current.answers else "[red]does not answer[/red]"
        _say(f"External Kafka at {escape(current.bootstrap)} (JOURNEY_KAFKA_BOOTSTRAP): {state}",
             markup=True)
        return
    if not current.running:
        _say(f"Kafka is not running (would listen on {current.bootstrap}, home {stack.dir})")
        return
    answers = "" if current.answers else " [red]but its port does not answer[/red]"
    _say(f"[green]Kafka running[/green] on {escape(current.bootstrap)}{answers}", markup=True)
    _show_local(current)


@stack_app.command()
def reset() -> None:
    """Stop the local broker and delete its data (topics and offsets); the jars stay."""
    stack = _stack()
    had_data = stack.data_dir.exists()
    stopped = stack.reset()
    if stopped is not None:
        _show_stopped(stopped)
    _say(f"Deleted {stack.data_dir}" if had_data else f"No data in {stack.dir}")
