"""Writes a compare run's report: `summary.json`, `loss_curves.png`, `timings.png` and `index.html` (which also shows
the targets of a `python -m harness.bench` run written to the same folder, `bench.json`, where there is one)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import jinja2
import markupsafe
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from harness.atomic import atomic_path  # noqa: E402
from harness.bench.timing import STAGE_TITLES  # noqa: E402
from harness.report.flip import default_flip  # noqa: E402

logger = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / 'templates'


def write_report(out_dir: Path, summary: dict, extra_sections: Sequence[str] = (), worst_frame: str | None = None) -> Path:
    """Writes all report files into `out_dir`; returns the path of `index.html`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_losses(summary['training'], out_dir / 'loss_curves.png')
    plot_timings(summary['performance'], out_dir / 'timings.png')
    if summary.get('physics'):
        plot_physics(summary['physics'], out_dir / 'physics.png')
    with atomic_path(out_dir / 'summary.json', '.json') as tmp:
        tmp.write_text(json.dumps(_finite(summary), indent=2))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template('report.html.j2').render(
        s=summary, failed=[c for c in summary['checks'] if c.get('state', 'pass' if c['passed'] else 'fail') == 'fail'],
        inconclusive=[c for c in summary['checks'] if c.get('state') == 'inconclusive'], titles=STAGE_TITLES,
        sections=[markupsafe.Markup(s) for s in extra_sections], worst_frame=worst_frame,
        provenance_json=json.dumps(summary['provenance'], indent=2), bench=load_bench(out_dir / 'bench.json'),
        flip=default_flip(summary['scenario']) if summary['verdict'] == 'go' else None)
    index = out_dir / 'index.html'
    with atomic_path(index, '.html') as tmp:
        tmp.write_text(html)
    return index


def load_bench(path: Path) -> dict | None:
    """What the report shows of a `python -m harness.bench` run written to `path`: `targets`, `date`, `git_commit`,
    `cpu`, `bandwidth_gb_s`, `wall_s`, `gather` (how native batches were gathered), `variants` (a line per mode of
    the loader-variant epochs); or `{'error': ...}` when the file
    cannot be read; None when there is none."""
    if not path.is_file():
        return None
    from harness.bench.run import streaming_note, variant_lines  # bench imports the pipelines: only where it is shown
    try:
        bench = json.loads(path.read_text())
        return {'targets': bench['targets'], 'date': bench['machine']['date'],
                'git_commit': bench['machine']['git_commit'], 'cpu': bench['machine']['cpu'],
                'cpu_count': bench['machine']['cpu_count'], 'bandwidth_gb_s': bench['bandwidth']['bytes_per_s'] / 1e9,
                'wall_s': bench['wall_s'], 'gather': streaming_note(bench['machine']), 'variants': variant_lines(bench)}
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s: not shown in the report (%s)", path, err)
        return {'error': f"{path.name} could not be read ({type(err).__name__}: {err})"}


def _finite(obj):
    """JSON has no inf/nan: write them as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def plot_losses(training: dict, path: Path) -> None:
    legacy, native = training['legacy_losses'], training['native_losses']
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={'height_ratios': [3, 1.4]})
    top.plot(legacy, label='legacy (.pt + DataLoader + torch_to_phiml)', lw=2.5, alpha=.6)
    top.plot(native, '--', label='native (.npz + PhiMLDataset)', lw=1.2)
    top.set_yscale('log')
    top.set_ylabel('training loss')
    top.legend()
    top.set_title('Training loss per step, same initial weights and batch plans')
    diff = [n - l for l, n in zip(legacy, native)]
    bottom.plot(diff, color='tab:red')
    bottom.axhline(0, color='k', lw=.5)
    bottom.set_ylabel('native − legacy')
    bottom.set_xlabel('step')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timings(performance: dict, path: Path) -> None:
    stages = list(performance)
    legacy = [performance[s]['legacy_s'] * 1e3 for s in stages]
    native = [performance[s]['native_s'] * 1e3 for s in stages]
    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(stages))
    ax.bar([i - .2 for i in x], legacy, .4, label='legacy')
    ax.bar([i + .2 for i in x], native, .4, label='native')
    for i, s in enumerate(stages):
        ax.annotate(f"{performance[s]['speedup']:.2f}×", (i, max(legacy[i], native[i])), ha='center', va='bottom', fontsize=8)
    ax.set_xticks(list(x), [STAGE_TITLES.get(s, s) for s in stages], rotation=15, fontsize=8)
    ax.set_yscale('log')
    ax.set_ylabel('median time [ms] (log)')
    ax.set_title('Per-stage time; label = speedup (legacy / native)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worst_frame(diff, legacy, native, path: Path) -> None:
    """The frame holding the worst element: legacy, native and their difference side by side, with named axes.

    Args:
        diff: The `TensorDiff` whose `worst` coordinates select the frame (batch, time, vector component).
        legacy, native: The two tensors it compared.
    """
    import numpy as np
    worst = diff.worst or {}
    select = {n: worst[n] for n in legacy.shape.names if n in worst and n not in legacy.shape.spatial.names[:2]}
    a, b = legacy[select], native[select]
    spatial = a.shape.spatial.names
    if len(spatial) > 2:  # 3-D: the slice through the worst element
        extra = {n: worst[n] for n in spatial[2:]}
        a, b, spatial = a[extra], b[extra], spatial[:2]
    xa, xb = a.numpy(list(spatial)), b.numpy(list(spatial))
    where = ', '.join(f"{k}={v}" for k, v in worst.items() if k not in spatial[:2])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    titles = ('legacy', 'native', 'native − legacy')
    arrays = (xa, xb, xb.astype(np.float64) - xa)
    for ax, title, array in zip(axes, titles, arrays):
        if len(spatial) == 1:
            ax.plot(array)
            ax.set_xlabel(spatial[0])
        else:
            im = ax.imshow(array.T, origin='lower', cmap='RdBu_r' if title.startswith('native −') else 'viridis')
            ax.set_xlabel(spatial[0])
            ax.set_ylabel(spatial[1])
            fig.colorbar(im, ax=ax, shrink=.8)
        ax.set_title(title)
    fig.suptitle(f"worst frame of {diff.name!r}: {where} (max |diff| {diff.max_abs:.3g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PHYSICS_TITLES = {'energy': ('kinetic energy <|u|²>/2', 'linear'), 'mean velocity': ('|mean velocity|', 'linear'),
                  'mass': ('smoke mass', 'linear'), 'divergence': ('max |div v|', 'log')}


def plot_physics(physics: dict, path: Path) -> None:
    """One panel per checked quantity: a line per sim of the simulation, the pipelines' served sims dashed over it."""
    quantities = physics['quantities']
    fig, axes = plt.subplots(1, len(quantities), figsize=(6 * len(quantities), 3.8), squeeze=False)
    styles = {'simulation': dict(lw=2.2, alpha=.45), 'legacy': dict(lw=1, ls='--'), 'phiml': dict(lw=1, ls=':')}
    for ax, quantity in zip(axes[0], quantities):
        title, scale = PHYSICS_TITLES.get(quantity, (quantity, 'linear'))
        for source in physics['sources']:
            style = styles.get(source['source'], dict(lw=1, ls='-.'))
            for i, (sim, curve) in enumerate(zip(source['sims'], source['curves'][quantity])):
                ax.plot(curve, color=f"C{sim % 10}", label=source['source'] if i == 0 else None, **style)
        if quantity == 'divergence':
            bound = physics['tolerances']['max_divergence']
            ax.axhline(bound, color='tab:red', lw=1, label=f"bound {bound:g}")
        ax.set_yscale(scale)
        ax.set_xlabel('frame')
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"Physics sanity ({physics['physics']}): {'laws hold' if physics['passed'] else 'VIOLATED'}; colour = sim",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
