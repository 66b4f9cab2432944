"""Name → class registries with lazy imports.

Entries are ``"package.module:Class"`` strings, imported on first use, so listing names never
imports torch or vllm. Outside code is reachable by passing its own ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Generic, TypeVar

from orchestrator.errors import ConfigError

T = TypeVar("T")
_OUTSIDE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: Any, entries: dict[str, str]) -> None:
        self.kind = kind
        self.base = base
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, target: str | type[T]) -> None:
        if isinstance(target, str):
            self._entries[name] = target
        else:
            self._entries[name] = f"{target.__module__}:{target.__qualname__}"

    def get(self, name: str) -> type[T]:
        target = self._entries.get(name)
        if target is None:
            if ":" not in name:
                raise ConfigError(
                    f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())} "
                    f"(or 'package.module:Class' for outside code)"
                )
            if not _OUTSIDE.fullmatch(name):
                raise ConfigError(
                    f"'{name}' is not a {self.kind} name nor 'package.module:Class'; "
                    f"valid names: {', '.join(self.names())}"
                )
            target = name
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(
                f"{self.kind} '{name}' needs a package that is not installed ({e.name}); "
                f"install the matching extra, e.g. pip install 'expert-orchestrator[cpu]'"
            ) from e
        cls = getattr(module, attr, None)
        if not isinstance(cls, type) or not issubclass(cls, self.base):
            raise ConfigError(f"{target} is not a {self.base.__name__} subclass")
        return cls
