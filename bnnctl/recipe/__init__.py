"""Recipes: YAML files that say everything about a run, resolved into a typed ``Recipe``.

* ``schema``: the sections (data, model, train, optimizer, schedule, fast, paper) as frozen
  dataclasses whose fields carry their type, default, allowed values and help (``fields``);
* ``checks``: a raw recipe checked value by value and across fields, and its model's size
  against this machine's memory;
* ``loading``: recipe files found, read, overridden by ``--set``, resolved and written back.

Every field says what values it takes, not only their type: numbers carry their allowed range
(``ge``/``gt``/``le``/``lt``; NaN and infinities are refused), lists their length and the range of
each item, and a field may add a rule of its own (``rule``). Errors are ``RecipeError``: one
sentence that names the file and the key, and says what is allowed.
"""
from .checks import (MAX_PARAMETERS, TRAINING_BYTES_PER_PARAMETER, check_consistency, check_fits_memory,
                     check_memory_available, estimate_parameters, memory_needed, resolve, resolve_data)
from .fields import NUM, REQUIRED, Field, RecipeError, f
from .presets import FAST_PRESETS
from .loading import (MAX_RECIPE_BYTES, RecipeInfo, apply_override, dump_recipe, find_recipe, list_recipes,
                      load_recipe, parse_override, recipes_dir)
from .schema import (SCHEMA, SEED_MAX, DataConfig, FastConfig, ModelConfig, OptimizerConfig, PaperConfig, Recipe,
                     ScheduleConfig, Section, TrainConfig, flat_schema)

__all__ = ["FAST_PRESETS", "MAX_PARAMETERS", "MAX_RECIPE_BYTES", "NUM", "REQUIRED", "SCHEMA", "SEED_MAX",
           "TRAINING_BYTES_PER_PARAMETER", "DataConfig", "FastConfig", "Field", "ModelConfig", "OptimizerConfig",
           "PaperConfig", "Recipe", "RecipeError", "RecipeInfo", "ScheduleConfig", "Section", "TrainConfig",
           "apply_override", "check_consistency", "check_fits_memory", "check_memory_available", "dump_recipe",
           "estimate_parameters", "f", "memory_needed",
           "find_recipe", "flat_schema", "list_recipes", "load_recipe", "parse_override", "recipes_dir", "resolve",
           "resolve_data"]
