"""Settings for the property-based tests (`hypothesis`): bounded and repeatable in CI.

Every property runs a fixed number of examples, derived from a fixed seed, with no per-example deadline (the
machines running CI are slow and shared) and no example database written into the checkout. To explore further
on a developer machine, scale the examples up and let the seed vary: PENGI_PROPERTY_SCALE=20 pytest tests/...
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("PENGI_PROPERTY_SCALE", "1"))


def bounded(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings for a property: `examples` examples (times PENGI_PROPERTY_SCALE), seeded in CI."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )
