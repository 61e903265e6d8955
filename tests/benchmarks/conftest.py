"""Benchmark fixtures: the default burgers scenario, simulated once per session."""
import pytest

from harness.config import load_config
from harness.data.simulate import simulate


@pytest.fixture(scope='session')
def bench_sim():
    return simulate(load_config('burgers', ['data.n_val_sims=0']))
