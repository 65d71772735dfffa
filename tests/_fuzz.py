"""One counter of property-test cases: each property checks it ran its cases, and the run's
terminal summary lists them (tests/conftest.py).

    @counted(min_cases=300)          # above @settings / @given
    @settings(max_examples=300, ...)
    @given(...)
    def test_property(...): ...
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

CASES: collections.Counter[str] = collections.Counter()


def counted(min_cases: int) -> Callable[[Any], Any]:
    """Count every case hypothesis runs of the property below, and fail the test unless it
    ran at least `min_cases` of them (a property that silently ran none checks nothing)."""

    def deco(test: Any) -> Any:
        name = test.__name__
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def counting(*args: Any, **kwargs: Any) -> Any:
            CASES[name] += 1
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = counting

        @functools.wraps(test)
        def checked(*args: Any, **kwargs: Any) -> None:
            before = CASES[name]
            test(*args, **kwargs)
            ran = CASES[name] - before
            assert ran >= min_cases, f"{name} ran {ran} cases, fewer than its {min_cases}"

        return checked

    return deco
