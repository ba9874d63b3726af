"""Load a policy (a base file and its drop-ins) and report every problem with its file, field path and line.

Whatever a file holds, the result is a policy or a :class:`PolicyError` with
problems: never another exception, so a daemon that reloads a bad file keeps
the policy in force and says why (see ``yamldoc`` for what is refused).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from weightwarden.agent.policy.layers import LayerError, drop_in_dir, drop_in_files, merge_all
from weightwarden.agent.policy.model import Policy
from weightwarden.agent.policy.yamldoc import MAX_BYTES, DocumentError, Node, compose, decode, plain, sources
from weightwarden.jsontypes import JsonObject


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None
    message: str
    file: str | None = None  # set when several files were merged: the one to fix
    severity: str = "error"  # or "warning": check passes, check --strict does not

    def render(self, filename: str) -> str:
        name = self.file or filename
        where = f"{name}:{self.line}" if self.line else name
        tag = "warning: " if self.severity == "warning" else ""
        return f"{where}: {tag}{self.path or '(document)'}: {self.message}"


class PolicyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str
    digest: str
    files: tuple[str, ...] = ()  # the base file, then the drop-ins merged over it, in order
    sources: dict[str, str] = field(default_factory=dict)  # dotted path -> "file:line" that set it
    data: JsonObject = field(default_factory=dict)  # the merged document, as written (units as strings)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(where: dict[tuple[int | str, ...], tuple[str, int | None]],
           loc: tuple[int | str, ...]) -> tuple[str | None, int | None]:
    """The file and line of the deepest part of ``loc`` that was written somewhere."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in where:
            return where[loc[:n]]
    return None, None


def parse_documents(docs: list[tuple[str, bytes | str]], source: str | None = None) -> LoadedPolicy:
    """Merge documents in order (base first) and validate the result."""
    layered = len(docs) > 1
    trees: list[Node] = []
    for name, content in docs:
        try:
            text = decode(content) if isinstance(content, bytes) else content
            if len(text) > MAX_BYTES:
                raise DocumentError(None, f"the document is over {MAX_BYTES:,} characters")
            tree = compose(text, name)
        except DocumentError as exc:
            raise PolicyError([Problem(exc.path, exc.line, exc.message, name if layered else None)]) from None
        except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
            # Belt and braces: yamldoc bounds all of these; should one slip through, it is still a problem.
            raise PolicyError([Problem("", None, f"cannot read: {type(exc).__name__}", name if layered else None)]) from None
        if tree is None or not isinstance(tree.value, dict):
            what = "a drop-in is a YAML mapping with metadata and/or spec" if trees else \
                "a policy is a YAML mapping with apiVersion, kind, metadata, spec"
            raise PolicyError([Problem("", 1, what, name if layered else None)])
        trees.append(tree)
    try:
        merged = merge_all(trees)
    except LayerError as exc:
        raise PolicyError([Problem(exc.path, exc.line, exc.message, exc.file)]) from None
    data = plain(merged)
    where = sources(merged)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; unknown keys are never ignored)"
            file, line = _where(where, loc)
            problems.append(Problem(_dotted(loc), line, msg, file if layered else None))
        raise PolicyError(problems) from None
    except (RecursionError, MemoryError, OverflowError, TypeError, ValueError) as exc:
        raise PolicyError([Problem("", None, f"cannot validate: {type(exc).__name__}: {str(exc)[:200]}")]) from None
    if layered:
        h = hashlib.sha256()
        for name, content in docs:
            h.update(name.encode() + b"\0" + (content if isinstance(content, bytes) else content.encode()) + b"\0")
        digest = h.hexdigest()[:16]
    else:
        content = docs[0][1]
        digest = hashlib.sha256(content if isinstance(content, bytes) else content.encode()).hexdigest()[:16]
    return LoadedPolicy(policy, source or docs[0][0], digest, tuple(n for n, _ in docs),
                        {_dotted(k): f"{f}:{ln}" if ln else f for k, (f, ln) in where.items() if k}, data)


def parse_policy(text: str | bytes, source: str = "<policy>") -> LoadedPolicy:
    return parse_documents([(source, text)], source)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise PolicyError([Problem("", None, f"cannot read policy: {exc.strerror}", str(path))]) from None
    return raw


def load_policy(path: str | Path, drop_ins: bool = True) -> LoadedPolicy:
    """The base file and, unless told not to, its drop-ins (see ``layers``)."""
    base = Path(path)
    docs: list[tuple[str, bytes | str]] = [(str(base), _read(base))]
    if drop_ins:
        try:
            extra = drop_in_files(base)
        except OSError as exc:
            raise PolicyError([Problem("", None, f"cannot list drop-ins: {exc.strerror}",
                                       str(drop_in_dir(base)))]) from None
        docs += [(str(p), _read(p)) for p in extra]
    return parse_documents(docs, str(base))


def stamp(path: str | Path) -> tuple[tuple[str, float], ...]:
    """What changes when the policy or a drop-in changes (names and mtimes): the daemon's reload trigger."""
    base = Path(path)
    out: list[tuple[str, float]] = []
    for p in [base, drop_in_dir(base)]:
        try:
            out.append((str(p), p.stat().st_mtime))
        except OSError:
            out.append((str(p), 0.0))
    with contextlib.suppress(OSError):
        out += [(str(p), p.stat().st_mtime) for p in drop_in_files(base)]
    return tuple(out)
