import pytest

from harness.pipeline import WindowKey
from harness.plan import make_plan, make_plans

KEYS = [WindowKey(s, t) for s in range(3) for t in range(5)]


def test_plan_covers_every_window_once():
    plan = make_plan(KEYS, 4, seed=1, epoch=0)
    assert sorted(plan.keys()) == KEYS
    assert [len(b) for b in plan.batches] == [4, 4, 4, 3]
    assert plan.n_windows == 15 and len(plan) == 4


def test_plan_depends_on_seed_and_epoch_only():
    assert make_plan(KEYS, 4, seed=1, epoch=0) == make_plan(list(reversed(KEYS)), 4, seed=1, epoch=0)
    assert make_plan(KEYS, 4, seed=1, epoch=0).keys() != make_plan(KEYS, 4, seed=2, epoch=0).keys()
    assert make_plan(KEYS, 4, seed=1, epoch=0).keys() != make_plan(KEYS, 4, seed=1, epoch=1).keys()
    assert [p.epoch for p in make_plans(KEYS, 4, seed=1, epochs=3)] == [0, 1, 2]


def test_drop_last():
    assert [len(b) for b in make_plan(KEYS, 4, seed=1, epoch=0, drop_last=True).batches] == [4, 4, 4]


def test_bad_batch_size():
    with pytest.raises(ValueError, match='`batch_size` \\(=0\\)'):
        make_plan(KEYS, 0, seed=1, epoch=0)
