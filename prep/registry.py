"""A registry of named classes, one module each (recipes, latent families): the built-in modules
register on import; `names()` gives the CLI's choices, in registration order."""

from __future__ import annotations

import importlib


class Registry:
    def __init__(self, package: str, builtin: tuple[str, ...]):
        self.package, self.builtin, self.classes = package, builtin, {}

    def register(self, cls):
        self.classes[cls.name] = cls
        return cls

    def _load(self) -> None:
        for name in self.builtin:
            importlib.import_module(f"{self.package}.{name}")

    def names(self) -> list[str]:
        self._load()
        return list(self.classes)

    def get(self, name: str):
        self._load()
        return self.classes[name]
