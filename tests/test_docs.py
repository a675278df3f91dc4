"""The examples in the public docstrings run and print what they claim."""
import doctest
import importlib

import pytest

MODULES = ["cumla._absorb", "cumla._api", "cumla._cache", "cumla._combine", "cumla._cost", "cumla._layer",
           "cumla._memory", "cumla._plan", "cumla._rope", "cumla._sharding", "cumla.distributed"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
