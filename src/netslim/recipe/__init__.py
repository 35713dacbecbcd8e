"""Recipes: YAML lists of registered method configs, validated as a whole and run."""

from . import steps  # noqa: F401  (registers train, finetune, evaluate, export)
from .spec import Recipe, load_recipe, parse_recipe

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_recipe"]


def run_recipe(*args, **kwargs):
    from .runner import run_recipe as _run

    return _run(*args, **kwargs)
