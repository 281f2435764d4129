"""The layers stay visible: import-linter's contracts (pyproject.toml) hold, no module imports itself back through
others, no module grows past 500 lines, and `import sockcat` and the command line's parser load only what they use.
docs/architecture.md says which layer each kind of change goes to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import sockcat

SRC = Path(__file__).resolve().parent.parent / "src" / "sockcat"
MAX_LINES = 500


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module in sockcat's import graph (Tarjan's algorithm)."""
    graph = grimp.build_graph("sockcat")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_layer_contracts_hold() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "importlinter.cli", "--no-cache"], capture_output=True, text=True, cwd=SRC.parent.parent
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_no_module_over_500_lines() -> None:
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"


# --- start-up: `import sockcat` and the command line load only what they use --------------------------


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return set(out.decode().split())


HEAVY = {
    "ssl",
    "asyncio",
    "sockcat.streams.sync",
    "sockcat.engines.relay",
    "sockcat.engines.bench",
    "sockcat.engines.services",
    "sockcat.aio",
}


def test_import_sockcat_is_lazy() -> None:
    assert not HEAVY & _modules_after("import sockcat")


def test_cli_parser_loads_no_socket_tls_or_asyncio_code() -> None:
    """`sockcat --help` / `--version` build the parser only: no socket engine, TLS or asyncio."""
    assert not HEAVY & _modules_after("import sockcat.cli\nsockcat.cli.build_parser()")


def test_every_public_name_still_imports() -> None:
    loaded = _modules_after(f"from sockcat import {', '.join(sockcat.__all__)}\nfrom sockcat import aio")
    assert {"sockcat.streams.sync", "sockcat.engines.relay", "sockcat.aio"} <= loaded
    assert set(sockcat.__all__) <= set(dir(sockcat))
    with pytest.raises(AttributeError):
        sockcat.no_such_name  # noqa: B018


def test_plain_connect_and_listen_load_neither_websockets_nor_asyncio() -> None:
    """A tcp/unix/tls `connect` or one-shot `listen` starts without the websockets package (loaded for a WebSocket
    address only) or asyncio (the event-loop servers' own): together about 80 ms of every start."""
    code = "import sockcat.cli.connect, sockcat.cli.listen, sockcat.engines.bridge, sockcat.engines.listen"
    loaded = _modules_after(code)
    assert "sockcat.engines.bridge" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("websockets", "asyncio")}
