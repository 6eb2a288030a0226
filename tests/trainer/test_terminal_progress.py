"""In a terminal the trainer draws a progress bar; its log lines print above the bar, never on the bar's line."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from tests.trainer.harness import PROCESS_TIMEOUT, train_command, trainer_env

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rank=0 [A-Z]+ ")  # cli.setup_logging's format
BAR = re.compile(r"\d+%\|")


def run_in_terminal(argv: list[str], env: dict, columns: int = 120) -> tuple[int, str]:
    """Exit code and everything written to a pseudo-terminal `columns` wide, as a person's terminal gets it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + PROCESS_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], deadline - time.monotonic())[0]:
                break
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def shown_lines(output: str) -> list[str]:
    """What each line of the terminal shows at the end: a carriage return goes back to the line's start,
    and what follows overwrites it."""
    lines = []
    for line in output.replace("\r\n", "\n").split("\n"):  # the terminal turns each \n into \r\n
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return lines


def test_log_lines_do_not_cut_the_progress_bar(run_file, tmp_path):
    # --tiny checkpoints every 5 steps: "checkpoint committed" lines arrive while the bar is drawn.
    code, output = run_in_terminal(train_command(run_file, tmp_path / "run", "training.maxSteps=6"), trainer_env())
    assert code == 0, output[-3000:]
    assert BAR.search(output), f"no progress bar in a terminal:\n{output[-3000:]}"
    after_bar = shown_lines(output[BAR.search(output).start():])
    logged = [line for line in after_bar if "rank=0 " in line]
    assert any("checkpoint" in line for line in logged), f"nothing was logged while the bar was shown:\n{output}"
    cut = [line for line in logged if not LOG_LINE.match(line)]
    assert not cut, "log lines printed on the progress bar's line:\n" + "\n".join(cut)
