"""`python -m harness.train`: the run whose default is flipped. Trains the tiny scenario on both pipelines, resumes, and
refuses bad usage with one line and exit code 2."""
import pytest
import torch

from conftest import PIPELINES, TINY
from harness.cli import train as train_cli
from harness.config import load_config
from harness.errors import ConfigError, HarnessError
from harness.training_run import LOG_COLUMNS, read_log, resolve_device, run_training, to_device

EPOCHS = 2


@pytest.fixture(scope='module')
def trained(tiny_sim, tmp_path_factory):
    """The tiny scenario trained for 3 epochs on each pipeline."""
    runs = {}
    for name, cls in PIPELINES.items():
        config = load_config('burgers', [*TINY, f'trainer.epochs={EPOCHS}', f'data.pipeline={name}', 'trainer.device=cpu'])
        runs[name] = run_training(config, tmp_path_factory.mktemp(name), cls, progress=False, simulation=tiny_sim)
    return runs


def test_validation_loss_decreases(trained):
    for run in trained.values():
        assert len(run.val_losses) == EPOCHS
        assert run.val_losses[-1] < run.val_losses[0]
        # 3 train sims x (9 frames - 2) = 21 windows in batches of 4: 6 steps per epoch
        assert [r.steps for r in run.history] == [6] * EPOCHS and len(run.step_losses) == 6 * EPOCHS


def test_both_pipelines_give_the_same_losses(trained):
    legacy, phiml = trained['legacy'], trained['phiml']
    assert (legacy.pipeline, phiml.pipeline) == ('legacy', 'phiml')
    assert legacy.step_losses == phiml.step_losses
    assert legacy.val_losses == phiml.val_losses


@pytest.mark.parametrize('name', ['legacy', 'phiml'])
def test_files_written(trained, name):
    run = trained[name]
    assert read_log(run.out / 'train_log.csv') == run.history
    assert (run.out / 'train_log.csv').read_text().splitlines()[0] == ','.join(LOG_COLUMNS)
    assert (run.out / 'loss.png').read_bytes()[:4] == b'\x89PNG'
    assert sorted(p.name for p in (run.out / 'checkpoints').iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    assert run.cache['rebuilt'] == [0, 1, 2, 3] and (run.out / 'cache' / name / 'manifest.json').is_file()


def test_resume_continues_bitwise(trained, tiny_sim, tmp_path):
    config = load_config('burgers', [*TINY, 'trainer.epochs=1', 'data.pipeline=phiml', 'trainer.device=cpu'])
    first = run_training(config, tmp_path, PIPELINES['phiml'], progress=False, simulation=tiny_sim)
    assert first.resumed_from == 0 and len(first.history) == 1
    longer = load_config('burgers', [*TINY, f'trainer.epochs={EPOCHS}', 'data.pipeline=phiml', 'trainer.device=cpu'])
    resumed = run_training(longer, tmp_path, PIPELINES['phiml'], resume=True, progress=False, simulation=tiny_sim)
    assert resumed.resumed_from == 1 and resumed.cache['rebuilt'] == []  # the cache is reused
    assert resumed.step_losses == trained['phiml'].step_losses
    assert resumed.val_losses == trained['phiml'].val_losses
    a = torch.load(tmp_path / 'checkpoints' / 'epoch_002.pt', weights_only=True)['model']
    b = torch.load(trained['phiml'].out / 'checkpoints' / 'epoch_002.pt', weights_only=True)['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_config(trained, tiny_sim):
    config = load_config('burgers', [*TINY, 'trainer.epochs=3', 'trainer.learning_rate=0.01', 'data.pipeline=phiml'])
    with pytest.raises(HarnessError, match=r"epoch_002.pt: written for another config \(differs in \['trainer.learning_rate'\]\)"):
        run_training(config, trained['phiml'].out, PIPELINES['phiml'], resume=True, progress=False, simulation=tiny_sim)


def test_batches_on_the_cpu_are_not_copied(both_pipelines):
    from harness.plan import make_plan
    pipeline = both_pipelines['phiml']
    batch = next(pipeline.batches(make_plan(pipeline.window_keys(), 4, seed=0, epoch=0)))
    moved = to_device(batch, torch.device('cpu'))
    assert moved['initial_state'] is batch['initial_state'] and moved['targets'] is batch['targets']


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")
def test_cuda_training_matches_cpu(trained, tiny_sim, tmp_path):
    config = load_config('burgers', [*TINY, f'trainer.epochs={EPOCHS}', 'trainer.device=cuda'])
    run = run_training(config, tmp_path, PIPELINES['phiml'], progress=False, simulation=tiny_sim)
    assert run.device == 'cuda' and run.val_losses[-1] < run.val_losses[0]
    cpu = trained['phiml'].step_losses
    assert max(abs(a - b) / abs(b) for a, b in zip(run.step_losses, cpu)) < 1e-3  # cuDNN kernels differ from CPU's


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"`trainer.device` \(='cuda'\): torch sees no CUDA device"):
        resolve_device('cuda')


def test_cli_trains_and_exits_0(tmp_path, capsys):
    out = tmp_path / 'run'
    args = ['burgers', *TINY, 'use_phiml_data=true', 'trainer.device=cpu', '--out', str(out), '--no-progress']
    assert train_cli.main(args) == 0
    assert 'on the phiml pipeline (cpu) for 1 epoch(s)' in capsys.readouterr().out
    assert [r.epoch for r in read_log(out / 'train_log.csv')] == [1]
    assert train_cli.main([*args, '--resume', 'trainer.epochs=2']) == 0
    assert 'resumed after epoch 1' in capsys.readouterr().out
    assert [r.epoch for r in read_log(out / 'train_log.csv')] == [1, 2]


@pytest.mark.parametrize('args, words', [
    (['burgers', 'use_phiml_data=maybe'], "`use_phiml_data` (='maybe') must be true or false"),
    (['burgers', 'data.pipeline=torch'], "`data.pipeline` (='torch') must be one of ['legacy', 'phiml']"),
    (['burgers', 'trainer.device=gpu'], "`trainer.device` (='gpu') must be one of ['auto', 'cpu', 'cuda']"),
    (['burgers', '--resume'], "--resume: no checkpoint in"),
    (['nosuch'], "unknown scenario 'nosuch'"),
], ids=['plan-spelling', 'pipeline', 'device', 'resume-nothing', 'scenario'])
def test_bad_usage_exit_2(args, words, tmp_path, capsys):
    assert train_cli.main([*args, '--out', str(tmp_path / 'out'), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err


def test_fresh_run_into_old_checkpoints_exit_2(trained, capsys):
    out = trained['legacy'].out
    assert train_cli.main(['burgers', *TINY, '--out', str(out), '--no-progress']) == 2
    assert 'holds 2 checkpoint(s) of an earlier run; pass --resume' in capsys.readouterr().err


def test_plan_spelling():
    assert load_config('burgers', ['use_phiml_data=true']).data.pipeline == 'phiml'
    assert load_config('burgers', ['use_phiml_data=False']).data.pipeline == 'legacy'
    assert load_config('burgers').data.pipeline == 'legacy'  # the shipped default until a team flips it
