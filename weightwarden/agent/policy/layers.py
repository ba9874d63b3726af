"""Layered policies: a base file plus drop-ins, merged in a fixed order. Pure, apart from listing files.

As fail2ban users know it (``jail.conf`` + ``jail.d/*.conf``), and as systemd
does it for units (``foo.service.d/*.conf``):

1. the base file, e.g. ``/etc/weightwarden/policy.yaml``;
2. then every ``*.yaml`` in the drop-in directory named after it without its
   suffix, ``/etc/weightwarden/policy.d/``, in lexical order of file name
   (``10-site.yaml`` before ``50-gpu.yaml``); other files (``.bak``, ``~``,
   ``.dpkg-old``) and hidden files are ignored.

A later file wins. Mappings merge key by key. The named lists ``spec.caps``,
``spec.budgets`` and ``spec.thresholds`` merge item by item on ``name``: an
item whose name exists changes only the fields it gives, a new name is
appended, and ``remove: true`` with a name deletes that item. Every other
value, including plain lists such as ``spec.allow`` or ``spec.interfaces``, is
replaced whole by the later file: what a file says is what you get, and
``policy check`` shows which file set each value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from weightwarden.agent.policy.yamldoc import Node

NAMED_LISTS = {("spec", "caps"), ("spec", "budgets"), ("spec", "thresholds")}
REMOVE = "remove"


class LayerError(Exception):
    def __init__(self, file: str, line: int | None, path: str, message: str) -> None:
        super().__init__(message)
        self.file, self.line, self.path, self.message = file, line, path, message


def drop_in_dir(base: Path) -> Path:
    """policy.yaml -> policy.d; a name without a suffix gets '.d' appended."""
    return base.with_suffix(".d") if base.suffix else base.with_name(base.name + ".d")


def drop_in_files(base: Path) -> list[Path]:
    folder = drop_in_dir(base)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _name_of(item: Node) -> Any:
    if isinstance(item.value, dict) and "name" in item.value:
        return item.value["name"].value
    return None


def _dotted(path: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in path)


def merge(base: Node, overlay: Node, path: tuple[object, ...] = ()) -> Node:
    """``overlay`` (a later file) over ``base``."""
    if isinstance(base.value, dict) and isinstance(overlay.value, dict):
        out = dict(base.value)
        for key, value in overlay.value.items():
            sub = (*path, key)
            if sub in NAMED_LISTS and isinstance(value.value, list):
                current = out.get(key)
                out[key] = _merge_named(current if current is not None and isinstance(current.value, list)
                                        else Node([], value.file, value.line), value, sub)
            elif key in out:
                out[key] = merge(out[key], value, sub)
            else:
                out[key] = value
        return Node(out, base.file, base.line)
    return overlay


def _merge_named(base: Node, overlay: Node, path: tuple[object, ...]) -> Node:
    items: list[Node | None] = list(base.value)
    for item in overlay.value:
        name = _name_of(item)
        remove = False
        if isinstance(item.value, dict) and REMOVE in item.value:
            flag = item.value[REMOVE]
            if not isinstance(flag.value, bool):
                raise LayerError(item.file, flag.line, _dotted((*path, REMOVE)), "remove is true or false")
            remove = flag.value
            item = Node({k: v for k, v in item.value.items() if k != REMOVE}, item.file, item.line)
        at = next((i for i, old in enumerate(items) if old is not None and name is not None and _name_of(old) == name),
                  None)
        if remove:
            if at is None:
                raise LayerError(item.file, item.line, _dotted(path),
                                 f"remove: nothing named {name!r} in the files before this one")
            items[at] = None
        elif at is not None:
            old = items[at]
            assert old is not None
            items[at] = merge(old, item, (*path, at))
        else:
            items.append(item)
    return Node([i for i in items if i is not None], overlay.file, overlay.line)


def merge_all(docs: list[Node]) -> Node:
    merged = docs[0]
    for doc in docs[1:]:
        if not isinstance(doc.value, dict):
            raise LayerError(doc.file, doc.line, "", "a drop-in is a YAML mapping with metadata and/or spec")
        merged = merge(merged, doc)
    return merged
