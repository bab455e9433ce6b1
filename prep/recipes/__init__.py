"""Recipes by name: text, chat, instruction, completion, retrieval (one file each, registered on
import), or a user's callable (`module:callable`, prep.recipes.custom) feeding one of them."""

from __future__ import annotations

from prep.recipes.base import RECIPES, Recipe, register

names = RECIPES.names


def get(name: str, base: str | None = None):
    """The recipe class `name`; a user's `module:callable` needs the built-in `base` it feeds."""
    if ":" in name:
        from prep.recipes.custom import recipe_class

        return recipe_class(name, base)
    return RECIPES.get(name)


def of_job(job: dict):
    """The recipe class a tokenize job runs (a user's callable with the built-in it feeds)."""
    return get(job["recipe"], job.get("recipe_base"))


__all__ = ["Recipe", "register", "names", "get", "of_job"]
