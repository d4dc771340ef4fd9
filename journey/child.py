"""A `journey <command>` run as a child process: started, waited for, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from journey.errors import ServiceUnavailableError


class ChildProcess:
    """One `python -m journey <command>` with its output in `log_path`."""

    def __init__(self, command: str, log_path: Path, env: dict[str, str] | None) -> None:
        self.command = command
        self.log_path = log_path
        self.env = env
        self.proc: Any = None

    def spawn(self, ready: Callable[[], bool], timeout: float, poll: float = 0.3) -> None:
        """Start the process and wait until `ready()`; stopped again if it is not."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "journey", self.command], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceUnavailableError(
                    f"the {self.command} exited with code {self.proc.returncode} while "
                    f"starting: see {self.log_path}")
            if ready():
                return
            time.sleep(poll)
        self.stop()
        raise ServiceUnavailableError(
            f"the {self.command} did not become ready within {timeout:.0f}s: see "
            f"{self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
