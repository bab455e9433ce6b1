"""Recipes: records -> token ids (+ loss masks), one module a recipe."""
