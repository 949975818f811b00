"""Find and run the examples of the README and the docs: every ```python and ```bash block, in page order.

Python blocks of one page run in one namespace, in-process. Bash blocks run line by line through a small
interpreter that understands what the examples use (comments, ``\\`` continuations, ``&&``, ``VAR=value``
and ``$VAR``, ``cat > FILE <<'END'`` here-documents, ``VAR=value command`` prefixes): ``flowrl ...`` and
``python -m flowrl.scripts...`` run in-process, ``pip install`` and ``pytest`` are taken as done (the suite
runs in an installed environment), anything else runs in bash. ``<!-- skip: reason -->`` on the line before
a block skips it. With ``parse_only``, ``flowrl`` and ``python -m flowrl.scripts...`` commands are parsed by
their own argument parsers instead of run (a renamed flag still fails); everything else runs as usual.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[a-z]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path, root: Path) -> list[Block]:
    """The python and bash blocks of a markdown file (snippet includes are followed by their own file)."""
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        lang = m.group("lang")
        if lang not in ("python", "bash"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        out.append(Block(str(path.relative_to(root)), line, lang, m.group("body"), skip and skip.group("reason")))
    return out


# ---------------------------------------------------------------------------------------------- bash
def _logical_lines(code: str) -> list[str]:
    """Join ``\\`` continuations; keep here-document bodies as part of their command."""
    lines, buf = [], ""
    raw = code.splitlines()
    i = 0
    while i < len(raw):
        line = raw[i]
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            i += 1
            continue
        line = buf + line
        buf = ""
        here = re.search(r"<<-?\s*'?\"?(\w+)'?\"?\s*$", line)
        if here:
            end = here.group(1)
            body = []
            i += 1
            while i < len(raw) and raw[i].strip() != end:
                body.append(raw[i])
                i += 1
            line = line + "\n" + "\n".join(body) + "\n"
        lines.append(line)
        i += 1
    return lines


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).rstrip()


class Shell:
    """Runs the bash examples of one page in ``cwd`` (see the module doc)."""

    def __init__(self, cwd: Path, env: dict[str, str], *, parse_only: bool = False):
        self.cwd = cwd
        self.env = dict(env)
        self.vars: dict[str, str] = {}
        self.parse_only = parse_only

    def run_block(self, code: str) -> None:
        for line in _logical_lines(code):
            if "\n" in line:  # a here-document: bash writes the file
                self._bash(line)
                continue
            line = _strip_comment(line)
            if not line.strip():
                continue
            for part in re.split(r"\s+&&\s+", line):
                self._run(part.strip())

    def _expand(self, word: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.vars.get(m.group(1), self.env.get(m.group(1), "")), word)

    def _run(self, command: str) -> None:
        m = re.fullmatch(r"(\w+)=(\S*)", command)
        if m:  # VAR=value
            self.vars[m.group(1)] = self._expand(m.group(2))
            return
        argv = [self._expand(w) for w in shlex.split(command)]
        extra = {}
        while argv and re.fullmatch(r"\w+=.*", argv[0]):
            k, v = argv.pop(0).split("=", 1)
            extra[k] = v
        if not argv:
            return
        if argv[:2] == ["pip", "install"] or argv[0] == "pytest":
            return  # the suite runs inside an installed environment
        if argv[0] == "flowrl":
            main = _flowrl_parse if self.parse_only else _flowrl_main
            self._in_process(extra, lambda: main(argv[1:]), command)
        elif argv[:2] == ["python", "-m"] and argv[2].startswith("flowrl.scripts"):
            run = _parse_module if self.parse_only else _run_module
            self._in_process(extra, lambda: run(argv[2], argv[3:]), command)
        elif argv[0] in ("torchrun", "python"):  # this interpreter, so that this checkout's flowrl runs
            head = [sys.executable, "-m", "torch.distributed.run"] if argv[0] == "torchrun" else [sys.executable]
            if argv[0] == "torchrun":  # a free port: other test runs on this machine may hold torchrun's default
                extra = {"PET_MASTER_PORT": str(_free_port()), **extra}
            self._exec([*head, *argv[1:]], extra, command)
        else:
            self._bash(command, extra)

    def _exec(self, argv: list[str], extra: dict[str, str], command: str) -> None:
        env = {**self.env, **self.vars, **extra}
        res = subprocess.run(argv, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=600)
        if res.returncode:
            raise AssertionError(f"`{command}` exited with {res.returncode}:\n{res.stderr[-3000:]}")

    def _in_process(self, extra: dict[str, str], fn, command: str) -> None:
        with _environ({**self.env, **extra}), _cwd(self.cwd):
            code = fn()
        if code:
            raise AssertionError(f"`{command}` exited with {code}")

    def _bash(self, command: str, extra: dict[str, str] | None = None) -> None:
        env = {**self.env, **self.vars, **(extra or {})}
        res = subprocess.run(["bash", "-ec", command], cwd=self.cwd, env=env, capture_output=True, text=True)
        if res.returncode:
            raise AssertionError(f"`{command}` exited with {res.returncode}:\n{res.stderr[-3000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flowrl_main(argv: list[str]) -> int:
    from flowrl.scripts.cli import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse errors and --help
        return int(e.code or 0)


def _parse(parse, argv: list[str]) -> int:
    """0 when ``parse(argv)`` accepts the arguments, else argparse's exit code (its message on stderr)."""
    try:
        parse(argv)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def _flowrl_parse(argv: list[str]) -> int:
    from flowrl.scripts.cli import build_parser

    return _parse(build_parser().parse_args, argv)


def _parse_module(module: str, argv: list[str]) -> int:
    """Parse the arguments of ``python -m module``: the flowrl command, or a script with ``parse_args(argv)``."""
    if module in ("flowrl.scripts", "flowrl.scripts.cli"):
        return _flowrl_parse(argv)
    return _parse(importlib.import_module(module).parse_args, argv)


def _run_module(module: str, argv: list[str]) -> int:
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = saved
    return 0


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _cwd(path: Path):
    saved = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(saved)


def run_python(code: str, namespace: dict, cwd: Path, env: dict[str, str]) -> None:
    with _environ(env), _cwd(cwd):
        exec(compile(code, "<example>", "exec"), namespace)
