"""Read one YAML policy document safely, keeping the line of every value. Pure.

Any file, however broken or hostile, gives problems with lines, never an
exception of another kind: bytes that are not UTF-8, a key written twice (YAML
keeps the last one silently, so a stricter cap written first would vanish),
nesting deep enough to exhaust Python's recursion (PyYAML's composer
recurses), aliases that expand to billions of nodes, integers too long to
convert, and tags that would build Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a policy is a page or two; a megabyte is already absurd
MAX_DEPTH = 32  # the model nests 6 deep; room for comments' sake, not for 3,000
MAX_NODES = 100_000  # after expanding aliases


@dataclass
class Node:
    """A value with where it was written. ``value`` is dict[str, Node], list[Node] or a scalar."""

    value: Any
    file: str
    line: int | None


class DocumentError(Exception):
    def __init__(self, line: int | None, message: str, path: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.path = path


def _dotted(path: tuple[object, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def decode(raw: bytes) -> str:
    if len(raw) > MAX_BYTES:
        raise DocumentError(None, f"the file is {len(raw):,} bytes; a policy is at most {MAX_BYTES:,}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DocumentError(line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                                  "(save the file as UTF-8)") from None


def _line(mark: Any) -> int | None:  # a yaml Mark, pure-Python or libyaml's
    return int(mark.line) + 1 if mark is not None else None


def _yaml_error(text: str, exc: yaml.YAMLError) -> DocumentError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = _line(mark)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[:exc.position].count("\n") + 1
    return DocumentError(line, f"not valid YAML: {exc}")


def _check_shape(text: str) -> None:
    """Nesting depth from the event stream, which PyYAML parses without recursion."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise DocumentError(_line(event.start_mark), f"nested more than {MAX_DEPTH} levels deep; "
                                                                 "a policy needs a handful")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _yaml_error(text, exc) from None


def compose(text: str, file: str) -> Node | None:
    """The document as a Node tree; None for an empty document."""
    _check_shape(text)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(text, exc) from None
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _Builder(loader, file).build(root)
    except yaml.YAMLError as exc:
        raise _yaml_error(text, exc) from None
    finally:
        loader.dispose()


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.count = 0

    def build(self, node: yaml.Node, path: tuple[object, ...] = ()) -> Node:
        self.count += 1
        line = _line(node.start_mark)
        if self.count > MAX_NODES:
            raise DocumentError(line, f"more than {MAX_NODES:,} values once aliases are expanded", _dotted(path))
        if len(path) > MAX_DEPTH:
            raise DocumentError(line, f"nested more than {MAX_DEPTH} levels deep (through aliases)", _dotted(path))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Node] = {}
            first: dict[object, int | None] = {}
            for key_node, value_node in node.value:
                key_line = _line(key_node.start_mark)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise DocumentError(key_line, "YAML merge keys (<<) are not supported in policies: write the "
                                                  "values out, or use a drop-in file", _dotted(path))
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise DocumentError(key_line, "a key must be a plain word", _dotted(path))
                if key in first:
                    # YAML would keep the second silently; a stricter value written first would vanish.
                    raise DocumentError(key_line, f"key {key!r} is written twice (first on line {first[key]}); "
                                                  "keep one", _dotted((*path, key)))
                first[key] = key_line
                child = self.build(value_node, (*path, str(key)))
                child.line = key_line  # a value's line is its key's, as people read it
                out[str(key)] = child
            return Node(out, self.file, line)
        if isinstance(node, yaml.SequenceNode):
            return Node([self.build(item, (*path, i)) for i, item in enumerate(node.value)], self.file, line)
        return Node(self._scalar(node, path), self.file, line)

    def _scalar(self, node: yaml.Node, path: tuple[object, ...]) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise DocumentError(_line(node.start_mark), "a key must be a plain word, not a list or mapping",
                                _dotted(path))
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except (ValueError, OverflowError, TypeError) as exc:
            # e.g. an integer of 5,000 digits: Python refuses to convert it.
            text = str(node.value)
            why = f"a number of {len(text):,} digits" if text.isdigit() else str(exc)[:200]
            raise DocumentError(_line(node.start_mark), f"cannot read this value: {why}", _dotted(path)) from None


def plain(node: Node | None) -> Any:
    """The Node tree as plain data."""
    if node is None:
        return None
    if isinstance(node.value, dict):
        return {k: plain(v) for k, v in node.value.items()}
    if isinstance(node.value, list):
        return [plain(v) for v in node.value]
    return node.value


def sources(node: Node | None, path: tuple[int | str, ...] = ()) -> dict[tuple[int | str, ...], tuple[str, int | None]]:
    """Where each value was written: path -> (file, line)."""
    if node is None:
        return {}
    out = {path: (node.file, node.line)}
    if isinstance(node.value, dict):
        for k, v in node.value.items():
            out.update(sources(v, (*path, k)))
    elif isinstance(node.value, list):
        for i, v in enumerate(node.value):
            out.update(sources(v, (*path, i)))
    return out
