"""Recipes: named chains of passes (the paths of the deployment tree) and recipe files."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from tflrewrite.errors import TflRewriteError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    steps: tuple[dict, ...] = field(default_factory=tuple)  # one dict of options per pass


BUILTIN: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("identity", "read and write the model, changing nothing (a lossless round trip)"),
    ]
}


def load(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a recipe from a TOML file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    if not os.path.exists(name_or_path):
        known = ", ".join(sorted(BUILTIN))
        raise TflRewriteError(f"{name_or_path}: no such recipe (built in: {known}) or file")
    try:
        with open(name_or_path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TflRewriteError(f"{name_or_path}: not a readable TOML recipe ({e})") from None
    unknown = set(doc) - {"name", "description", "steps"}
    if unknown:
        raise TflRewriteError(f"{name_or_path}: unknown recipe keys: {', '.join(sorted(unknown))}")
    steps = doc.get("steps", [])
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise TflRewriteError(f"{name_or_path}: 'steps' must be an array of tables")
    if steps:
        raise TflRewriteError(
            f"{name_or_path}: this version of tflrewrite has no passes yet; "
            "a recipe file can only be empty"
        )
    name = str(doc.get("name", os.path.basename(name_or_path)))
    return Recipe(name, str(doc.get("description", "")), tuple(steps))
