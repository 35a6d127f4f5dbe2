"""Explicit, lazy registries: one table name -> "module:attr" per kind of component.

Names are known (and checkable) without importing anything; a component's module is imported
the first time it is asked for. Sources, methods, kinds and analyses each keep one table.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from mtml.errors import UserError


class Registry(Mapping):
    """A read-only mapping name -> component, importing `module:attr` on first use.

    `registry[name]` raises KeyError for an unknown name (mapping semantics);
    `registry.resolve(name, key)` raises a UserError naming params key `key` and the allowed
    names instead.
    """

    def __init__(self, kind: str, table: Mapping[str, str]):
        self.kind = kind
        self.table = dict(table)
        self._loaded: dict[str, object] = {}

    def names(self) -> list[str]:
        return sorted(self.table)

    def check(self, name, key: str) -> str:
        """`name` if registered, else a UserError naming params key `key`."""
        if not isinstance(name, str) or name not in self.table:
            raise UserError(f"params key '{key}' is {name!r}; allowed: {', '.join(self.names()) or '(none)'}")
        return name

    def resolve(self, name, key: str):
        return self[self.check(name, key)]

    def __getitem__(self, name: str):
        if name not in self._loaded:
            module, _, attr = self.table[name].partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]

    def __contains__(self, name) -> bool:
        return name in self.table

    def __iter__(self) -> Iterator[str]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
