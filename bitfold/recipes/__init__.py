"""Named, versioned quantization recipes (YAML) and their loader."""

from bitfold.recipes.recipe import (
    Recipe, RecipeError, RotateSpec, SearchSpec, SplitSpec, TensorSpec, candidate_formats, list_recipes, load_recipe,
    parse_recipe,
)

__all__ = [
    "Recipe", "RecipeError", "RotateSpec", "SearchSpec", "SplitSpec", "TensorSpec", "candidate_formats", "list_recipes",
    "load_recipe", "parse_recipe",
]
