"""Load a policy file and report every problem with its field path and line."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from weightwarden.agent.policy.model import Policy


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {self.path or '(document)'}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str
    digest: str


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Walk the YAML node tree along a pydantic error location; return the deepest line."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_policy(text: str, source: str = "<policy>") -> LoadedPolicy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PolicyError([Problem("", mark.line + 1 if mark else None, f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise PolicyError([Problem("", 1, "a policy is a YAML mapping with apiVersion, kind, metadata, spec")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; unknown keys are never ignored)"
            problems.append(Problem(_dotted(loc), _line_of(node, loc), msg))
        raise PolicyError(problems) from None
    return LoadedPolicy(policy, source, hashlib.sha256(text.encode()).hexdigest()[:16])


def load_policy(path: str | Path) -> LoadedPolicy:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PolicyError([Problem("", None, f"cannot read policy: {exc.strerror}")]) from None
    return parse_policy(text, str(path))
