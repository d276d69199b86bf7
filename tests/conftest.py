"""Shared small, real models for the fast tests (random weights: the tests check behaviour, not accuracy)."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # so tests can use "tiny_models:factory" specs


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fixed_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _private_search_cache(tmp_path_factory):
    """The CLI caches searches: keep the tests' entries out of the user's cache (and each session fresh)."""
    before = os.environ.get("TORCHSLIM_SEARCH_CACHE")
    os.environ["TORCHSLIM_SEARCH_CACHE"] = str(tmp_path_factory.mktemp("search-cache"))
    yield
    if before is None:
        os.environ.pop("TORCHSLIM_SEARCH_CACHE", None)
    else:
        os.environ["TORCHSLIM_SEARCH_CACHE"] = before


@pytest.fixture
def tiny_cnn():
    import tiny_models

    return tiny_models.cnn()
