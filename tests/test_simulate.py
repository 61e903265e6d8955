import random

import numpy as np
import pytest
import torch

from harness.config import load_config
from harness.data.simulate import simulate
from conftest import TINY


def _values(sim):
    return sim.fields['velocity'].values.native(['sim', 'time', 'x', 'y', 'vector'])


def test_same_seed_bit_identical(tiny_sim, tiny_config):
    again = simulate(tiny_config)
    assert torch.equal(_values(tiny_sim), _values(again))


def test_other_seed_differs(tiny_sim):
    other = simulate(load_config('burgers', [*TINY, 'seed=7']))
    assert not torch.equal(_values(tiny_sim), _values(other))


def test_trajectory_dims(tiny_sim, tiny_config):
    values = tiny_sim.sim_fields(0)['velocity'].values
    assert set(values.shape.names) == {'time', 'x', 'y', 'vector'}
    assert values.shape.get_size('time') == tiny_config.sim.n_frames
    assert values.shape.channel.item_names[0] == ('x', 'y')
    assert tiny_sim.n_sims == len(tiny_config.all_sims)
    assert bool(torch.isfinite(_values(tiny_sim)).all())
    # the flow evolves: consecutive frames differ
    v = _values(tiny_sim)
    assert not torch.equal(v[:, 0], v[:, 1])


def test_global_rng_untouched(tiny_config):
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    simulate(tiny_config)
    assert random.random() == random.Random(123).random()
    assert np.random.rand() == np.random.RandomState(123).rand()
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(123)).item()


@pytest.mark.parametrize('resolution, dims', [('[16]', ('x',)), ('[8,8,8]', ('x', 'y', 'z'))], ids=['1d', '3d'])
def test_other_ranks(resolution, dims):
    config = load_config('burgers', [*TINY, f'sim.resolution={resolution}', 'sim.n_steps=3', 'data.n_sims=2'])
    values = simulate(config).sim_fields(1)['velocity'].values
    assert values.shape.spatial.names == dims
    assert values.shape.channel.item_names[0] == dims


def test_sim_index_checked(tiny_sim):
    with pytest.raises(IndexError, match='`sim` \\(=99\\)'):
        tiny_sim.sim_fields(99)


def test_cg_stops_every_sim_of_a_batch_at_its_smallest_tolerance_so_smoke_is_not_chunked():
    """Why `CHUNKED` leaves smoke out: in a batch, the sim with the large right-hand side iterates until the residual
    meets the small one's relative tolerance, so its solution depends on the other sim (phiml 1.16.1, torch CG)."""
    import warnings
    from phi.torch import flow  # noqa: F401  (the torch backend, as smoke runs on)
    from phiml import math
    from phiml.math import Solve, batch, spatial

    from harness.data.simulate import CHUNKED

    @math.jit_compile_linear
    def operator(p):  # symmetric positive definite
        below, above = math.shift(p, (-1, 1), padding=0, stack_dim=None)
        return 2.05 * p - below - above

    rhs = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32) * np.array([[1e2], [1e-3]], np.float32)
    y = math.tensor(rhs, batch('sim'), spatial('x'))

    def solve(y):
        with warnings.catch_warnings(), math.SolveTape() as tape:
            warnings.filterwarnings('ignore', message='Sparse (CSR tensor support|invariant checks)',
                                    category=UserWarning)
            x = math.solve_linear(operator, y, Solve('CG', 1e-5, 1e-5, x0=0 * y))
        return x.numpy(['sim', 'x']), tape[0].iterations.numpy('sim').tolist()

    (both, iterations_both), (alone, iterations_alone) = solve(y), solve(y.sim[0:1])
    assert (iterations_both, iterations_alone) == ([36, 25], [31])
    assert both[0].tobytes() != alone[0].tobytes()
    assert 'smoke' not in CHUNKED and 'burgers' in CHUNKED
