"""Recipes: every named recipe loads; bad names, keys and formats are clear errors."""

import pytest

from bitfold.recipes import RecipeError, list_recipes, load_recipe, parse_recipe

REQUIRED = {"w4a4-fp", "w4a8-fp", "w8a8-fp", "w4a4-int", "w4a4-int-smooth", "w4a16-int-g128", "w4a16-fp-g32"}


def test_named_recipes_load():
    names = list_recipes()
    assert REQUIRED <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.version >= 1 and recipe.weight_formats()
    assert load_recipe("w4a4-fp").activations.preshift
    assert load_recipe("w4a16-int-g128").activations is None


def test_unknown_name_lists_the_recipes():
    with pytest.raises(RecipeError, match="unknown recipe 'w5a5'.*w4a4-fp"):
        load_recipe("w5a5")


def test_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nversion: 2\ndescription: x\nweights: {bits: 3, kind: int}\nexclude: ['lm_head']\n")
    recipe = load_recipe(path)
    assert recipe.weight_formats() == ["int3"] and recipe.exclude == ["lm_head"]


@pytest.mark.parametrize("data,message", [
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4, "kidn": "fp"}}, "unknown key.*kidn"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4, "kind": "format",
                                                                  "formats": ["fp5"]}}, "unknown number format"),
    ({"name": "x", "version": 1, "weights": {"bits": 4}}, "missing required key 'description'"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4, "granularity": "group"}}, "group_size"),
    ({"schema": 9, "name": "x"}, "schema 9"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4, "rounding": "up"}}, "rounding must be"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4},
      "activations": {"bits": 4, "granularity": "tensor", "rounding": "gptq"}}, "rounding applies to weights"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4, "rounding": "gptq"},
      "activations": {"bits": 4, "granularity": "tensor", "preshift": True, "shift_weights": "float"}},
     "does not combine"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4}, "rotate": {"inputs": "some"}},
     "rotate.inputs must be activation or all"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4}, "rotate": {"max_block": 384}},
     "rotate.max_block must be a power of two"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4}, "layers": ["conv"], "rotate": {}},
     "rotate applies to linear layers"),
    ({"name": "x", "version": 1, "description": "", "weights": {"bits": 4}, "rotate": {"block": 64}},
     "rotate: unknown key.*block"),
])
def test_invalid_recipes(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data, "test.yaml")
