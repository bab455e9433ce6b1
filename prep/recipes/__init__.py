"""Recipes by name: text, chat, instruction, completion (one file each, registered on import)."""

from __future__ import annotations

import importlib

from prep.recipes.base import REGISTRY, Recipe, register

BUILTIN = ("text", "chat", "instruction", "completion")


def _load() -> None:
    for name in BUILTIN:
        importlib.import_module(f"prep.recipes.{name}")


def names() -> list[str]:
    _load()
    return list(REGISTRY)


def get(name: str) -> type[Recipe]:
    _load()
    return REGISTRY[name]


__all__ = ["Recipe", "register", "names", "get"]
