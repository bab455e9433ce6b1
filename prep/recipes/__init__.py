"""Recipes by name: text, chat, instruction, completion (one file each, registered on import)."""

from __future__ import annotations

from prep.recipes.base import RECIPES, Recipe, register

names, get = RECIPES.names, RECIPES.get

__all__ = ["Recipe", "register", "names", "get"]
