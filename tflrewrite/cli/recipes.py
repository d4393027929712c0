"""`tflrewrite recipes`: lists the built-in recipes."""

from __future__ import annotations

import argparse

from tflrewrite.cli.common import Parser


def parser() -> argparse.ArgumentParser:
    return Parser(prog="tflrewrite recipes", description="List the built-in recipes.")


def run(args: argparse.Namespace) -> int:
    from tflrewrite import recipes

    width = max(len(n) for n in recipes.BUILTIN)
    for r in recipes.BUILTIN.values():
        print(f"{r.name:<{width}}  {r.description}")
    print(
        "\nFlags (--prune, --cluster, --quantize, ...) override a recipe's options or add "
        "its missing steps;\na TOML file given to --recipe can set options per tensor "
        "(see `tflrewrite --help`)."
    )
    return 0
