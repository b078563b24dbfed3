"""Name → factory registries: every pluggable piece (task, model source, loss, callback) is one entry."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from tuneforge.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._items:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)
