"""The tutorials run as written: every console command and every Python example, their output compared.

A document is read top to bottom, as a reader would work through it, in one directory and one shell:

* a ```` ```console ```` block holds commands (``$ ...``), each followed by the output it must print (stdout and
  stderr, however they interleave). ``...`` in an expected line stands for any text. A command that ends in ``&``
  runs in the background, and the next command waits until the address it names is bound and, when its stderr
  goes to a file, until the ``listening on`` line is there, as a reader would wait for it. Where two threads
  print at once (a command copies both directions side by side), the block is marked
  ```` ```console any-order ````: the same lines, in any order;
* a ```` ```pycon ```` block runs as a doctest (``...`` matches any text), every block of the document in one
  namespace, as in one interpreter session.

Background commands still running at the end are ended by their PID.
"""

from __future__ import annotations

import doctest
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TIMEOUT, port_bound, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "docs" / "tutorial.md", ROOT / "docs" / "zh" / "tutorial.md"]
_DONE = "__tutorial_command_done__"


@dataclass
class Block:
    kind: str  # "console", "console any-order" or "pycon"
    line: int  # where it starts in the document (1-based)
    text: str


def blocks(path: Path) -> Iterator[Block]:
    fence = re.compile(r"^```(console(?: any-order)?|pycon)\s*$")
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = fence.match(lines[i])
        if not m:
            i += 1
            continue
        end = lines.index("```", i + 1)
        yield Block(m.group(1), i + 1, "\n".join(lines[i + 1 : end]) + "\n")
        i = end + 1


def commands(block: Block) -> Iterator[tuple[str, list[str]]]:
    """(command, expected output lines) in the order they appear."""
    current: tuple[str, list[str]] | None = None
    for line in block.text.splitlines():
        if line.startswith("$ "):
            if current is not None:
                yield current
            current = (line[2:], [])
        elif current is not None:
            current[1].append(line)
        else:
            raise AssertionError(f"line {block.line}: output before the first command: {line!r}")
    if current is not None:
        yield current


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.rstrip().split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def same_lines(expected: list[str], actual: list[str], *, any_order: bool) -> bool:
    if len(expected) != len(actual):
        return False
    if not any_order:
        return all(matches(e, a) for e, a in zip(expected, actual, strict=True))
    left = list(actual)
    for e in expected:
        hit = next((a for a in left if matches(e, a)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


class Shell:
    """One bash for the whole document, as a reader's terminal: commands, their output, background jobs."""

    def __init__(self, cwd: Path) -> None:
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("SOCKCAT_CODE", None)
        self.p = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.background: list[int] = []
        self._buffer = b""

    def run(self, command: str) -> str:
        """Run ``command`` (stdin /dev/null unless it pipes); its output. A background one gives none."""
        assert self.p.stdin is not None
        if command.endswith("&"):
            script = f'{command[:-1].rstrip()} < /dev/null &\necho "$!"\n'
        else:
            script = f"{{ {command}\n}} < /dev/null\n"
        # (the marker keeps the command's status for a following ``echo $?``)
        self.p.stdin.write(f"{script}__status=$?; printf '\\n{_DONE}\\n'; (exit $__status)\n".encode())
        self.p.stdin.flush()
        out = self._until_done(command)
        if command.endswith("&"):
            self.background.append(int(out.strip()))
            _wait_bound(command)
            return ""
        return out

    def _until_done(self, command: str) -> str:
        assert self.p.stdout is not None
        marker = f"\n{_DONE}\n".encode()
        deadline = time.monotonic() + TIMEOUT
        fd = self.p.stdout.fileno()
        while marker not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"{command!r} did not finish in {TIMEOUT} s; output so far: {self._buffer!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the shell ended during {command!r}: {self._buffer!r}")
            self._buffer += chunk
        out, self._buffer = self._buffer.split(marker, 1)
        return out.decode(errors="replace")

    def close(self) -> None:
        for pid in self.background:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        if self.p.stdin is not None:
            self.p.stdin.close()
        try:
            self.p.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def _wait_bound(command: str) -> None:
    """Wait until the address a background command serves on is bound (tcp, udp or a Unix socket file)."""
    if m := re.search(r"\b(?:tcp6?|tls|wss?)://\S*:(\d+)", command):
        port = int(m.group(1))
        wait_until(lambda: port_bound(port), f"port {port} listens")
    elif m := re.search(r"\budp6?://\S*:(\d+)", command):
        port = int(m.group(1))
        wait_until(lambda: port_bound(port, socket.SOCK_DGRAM), f"udp port {port} is bound")
    elif m := re.search(r"\bunix\w*:([^\s'\"]+)", command):
        path = Path(m.group(1))
        wait_until(path.exists, f"{path} is bound")
    else:
        raise AssertionError(f"a background command must name the address it serves: {command!r}")
    if log := re.search(r"\b2>\s*(\S+)", command):  # its stderr goes to a file: wait for the line there too
        path = Path(log.group(1))
        wait_until(lambda: path.exists() and "listening on" in path.read_text(), f"'listening on' in {path}")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_tutorial_runs_as_written(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shell = Shell(tmp_path)
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.REPORT_ONLY_FIRST_FAILURE
    )
    ran = 0
    try:
        for block in blocks(path):
            where = f"{path.relative_to(ROOT)}:{block.line}"
            if block.kind == "pycon":
                test = parser.get_doctest(block.text, namespace, where, str(path), block.line)
                result = runner.run(test, clear_globs=False)
                namespace.update(test.globs)  # (a doctest runs in a copy)
                assert result.failed == 0, f"{where}: the Python example above failed"
                ran += 1
                continue
            for command, expected in commands(block):
                actual = shell.run(command).splitlines()
                assert same_lines(expected, actual, any_order=block.kind.endswith("any-order")), (
                    f"{where}: {command!r} printed\n" + "\n".join(actual) + "\nnot\n" + "\n".join(expected)
                )
                ran += 1
    finally:
        shell.close()
    assert ran >= 20, f"{path}: only {ran} commands and examples"
