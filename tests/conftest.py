from hypothesis import HealthCheck, settings

from cumla.testing import examples

# Bounded example counts keep CI well under its time budget; CUMLA_EXAMPLE_SCALE
# multiplies them all (cumla.testing.examples) for a longer run.
settings.register_profile(
    "cumla", max_examples=examples(40), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("cumla")
