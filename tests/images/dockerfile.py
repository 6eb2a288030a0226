"""A small Dockerfile reader for the image tests: stages, instructions, ARG defaults, pip pins."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)$")


@dataclass
class Stage:
    base: str  # FROM image, ARGs expanded
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARG defaults (before the first FROM)
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def runs(self) -> list[str]:
        return [args for stage in self.stages for args in stage.all("RUN")]

    def lineage(self, stage: Stage) -> list[Stage]:
        """`stage` and the stages it is built FROM, base first."""
        by_name = {s.name: s for s in self.stages if s.name}
        chain = [stage]
        while chain[0].base in by_name:
            chain.insert(0, by_name[chain[0].base])
        return chain


def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=expand(parts[0], global_args), name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(path=path, args=global_args, stages=stages)


def pip_installs(run: str) -> list[list[str]]:
    """Argument lists of every `pip install` in a RUN command (commands split on &&, ||, ;, |)."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    out = []
    for words in commands:
        for i, word in enumerate(words):
            if word.endswith("pip") and (j := _subcommand(words, i + 1)) is not None and words[j] == "install":
                out.append(words[j + 1:])
                break
    return out


def _subcommand(words: list[str], i: int) -> int | None:
    """Index of pip's subcommand after its global options (`pip --python X install ...`)."""
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] == "--python" else 1
    return i if i < len(words) else None


def bind_mounts(run: str) -> dict[str, str]:
    """{target: source} of a RUN's bind mounts from the build context (not from another stage)."""
    mounts = {}
    for spec in re.findall(r"--mount=(\S+)", run):
        options = dict(o.partition("=")[::2] for o in spec.split(","))
        if options.get("type") == "bind" and "from" not in options:
            mounts[options["target"]] = options.get("source", ".")
    return mounts


def install_targets(path: Path) -> dict[str, set[str]]:
    """{'operator' or 'trainer': extras} for the repository's packages a Dockerfile pip-installs."""
    targets: dict[str, set[str]] = {}
    for run in parse(path).runs():
        for args in pip_installs(run):
            for word in args:
                m = re.fullmatch(r"(?:\./|/src/)(operator|trainer)(?:\[([^\]]*)\])?", word)
                if m:
                    targets.setdefault(m.group(1), set()).update(filter(None, (m.group(2) or "").split(",")))
    return targets


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = PIN.match(line)
            if not m:
                raise ValueError(f"{path}: {line!r} is not pinned with ==")
            pins[normalize(m.group(1))] = m.group(3)
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
