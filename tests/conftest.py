import os

from hypothesis import HealthCheck, settings

# Bounded example counts keep CI well under its time budget.
settings.register_profile(
    "cumla", max_examples=int(os.environ.get("CUMLA_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("cumla")
