"""``bitfold recipes [NAME]``: the named recipes with one-line descriptions, or one recipe's YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

from bitfold.cli.parsing import add_command
from bitfold.cli.tables import format_table

EXAMPLES = """\
examples:
  bitfold recipes
  bitfold recipes w4a4-fp          # print the recipe's YAML (copy it to make your own)
"""


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "recipes", "list the named recipes", __doc__, EXAMPLES)
    p.add_argument("name", nargs="?", metavar="NAME", help="show this recipe's YAML")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bitfold.recipes import list_recipes, load_recipe

    if args.name is None:
        recipes = list_recipes()
        print("\n".join(format_table(["recipe", "description"], sorted(recipes.items()), indent="")))
        print("\n`bitfold recipes NAME` prints one; `--recipe FILE.yaml` takes your own.")
        return 0
    recipe = load_recipe(args.name)
    print(f"# {recipe.source}")
    print(Path(recipe.source).read_text(encoding="utf-8").rstrip())
    return 0
