"""`python -m harness.compare SCENARIO [key=value ...]`: run both pipelines on the same simulations and seeds,
diff every batch, time every stage, train the same model with both, and write the report that decides the default.

Exit code: 0 when the verdict is go, 1 when no-go (a check failed: a correctness check, or a timing or memory check
missed clearly), 2 for bad usage or a bad config, 3 when inconclusive (every correctness check passed, but a timing
check's interval still straddled its threshold after the re-measurements: rerun on a quieter machine or with more
`compare.timing_repeats`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from harness.cli.common import OneLineParser, add_scale_arguments, guarded, setup_logging, verdict_exit_code
from harness.cli.registry import add_pipeline_flags, configure_pipelines, pipeline_argv, report_folder
from harness.config import load_config, quick_overrides
from harness.report.flip import default_flip
from harness.errors import ConfigError
from harness.run import run_compare
from harness.scale import open_executor

PROG = 'python -m harness.compare'


def make_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('scenario', help="scenario name (harness/configs/<scenario>.yaml) or the path of a .yaml config of your own")
    parser.add_argument('overrides', nargs='*', metavar='key=value', help="config overrides, e.g. trainer.epochs=3")
    parser.add_argument('--out', type=Path, help="output folder (default: reports/<scenario>/; with other pipelines "
                        "reports/<scenario>-<legacy name>-vs-<native name>/)")
    parser.add_argument('--cache-dir', type=Path, help="reuse the harness's caches in this folder (legacy/, phiml/; "
                        "default: <out>/cache, rebuilt as needed); they are verified against their manifests and a bad "
                        "file is an error; a folder of files the harness did not write is refused")
    parser.add_argument('--repair', action='store_true', help="rewrite the missing or bad files of --cache-dir that the "
                        "harness wrote (its manifest records them); never a file of anyone else")
    parser.add_argument('--legacy-cache', type=Path, metavar='DIR', help="judge this existing legacy cache instead of "
                        "simulating (only read): resolution, frames, fields and channels come from its files")
    parser.add_argument('--native-cache', type=Path, metavar='DIR2', help="with --legacy-cache: your own native cache "
                        "of the same sims (only read); default: DIR migrated into <out>/native-cache and verified")
    parser.add_argument('--channels', action='append', default=[], metavar='FIELD=a,b,c',
                        help="channel names of a field whose channels its shape cannot name (repeatable; the same as "
                             "data.channels.FIELD=[a,b,c])")
    add_pipeline_flags(parser)
    add_scale_arguments(parser)
    parser.add_argument('--quick', action='store_true', help="a tiny run for smoke tests (~15 s)")
    parser.add_argument('--no-progress', action='store_true', help="no progress bars")
    parser.add_argument('-v', '--verbose', action='store_true', help="log what each step does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison; returns the verdict's exit code, or 2 with one line on stderr for bad usage."""
    return guarded(_main, PROG, argv)


def _main(argv: Sequence[str] | None) -> int:
    args = make_parser().parse_intermixed_args(argv)
    setup_logging(args.verbose)
    if args.legacy_cache is None and args.native_cache is not None:
        raise ConfigError(f"--native-cache (={str(args.native_cache)!r}) needs --legacy-cache DIR: the legacy cache is "
                          f"the source of truth it is judged against")
    if args.legacy_cache is not None and (args.cache_dir is not None or args.repair):
        raise ConfigError(f"--legacy-cache (={str(args.legacy_cache)!r}) judges an existing cache and writes nothing "
                          f"into it: --cache-dir and --repair (for the harness's simulated caches) do not apply")
    overrides = [*channel_overrides(args.channels), *args.overrides]
    config = load_config(args.scenario, [*(quick_overrides(args.scenario) if args.quick else ()), *overrides])
    config, (legacy_cls, native_cls) = configure_pipelines(config, args.legacy, args.native)
    out = args.out or report_folder(config, (legacy_cls, native_cls))
    with open_executor(args.workers, args.scheduler) as executor:
        summary = run_compare(config, out, args.cache_dir, legacy_cls=legacy_cls.configured(config),
                              native_cls=native_cls.configured(config), progress=not args.no_progress,
                              overrides=[*(['--quick'] if args.quick else []), *pipeline_argv(args.legacy, args.native),
                                         *existing_argv(args.legacy_cache, args.native_cache), *overrides],
                              repair=args.repair, legacy_cache=args.legacy_cache, native_cache=args.native_cache,
                              executor=executor, scenario=args.scenario)
    print(f"verdict: {summary['verdict'].upper()} ({sum(c['passed'] for c in summary['checks'])}/{len(summary['checks'])} "
          f"checks passed) in {summary['durations']['total_s']:.1f} s")
    for check in summary['checks']:
        if not check['passed']:
            print(f"  {'INCONCLUSIVE' if check['state'] == 'inconclusive' else 'FAILED'} {check['name']}: "
                  f"{check['detail']}")
    print(f"report: {(out / 'index.html').resolve()}")
    flip = default_flip(args.scenario) if summary['verdict'] == 'go' else None
    if flip and flip['current'] != 'phiml':
        print(f"to train on the native pipeline by default ({flip['file']} line {flip['line']}): {flip['command']}")
    return verdict_exit_code(summary['verdict'])


def existing_argv(legacy_cache: Path | None, native_cache: Path | None) -> list[str]:
    """The flags that name the team's own caches, as the report's line that reproduces the run repeats them."""
    return [*(['--legacy-cache', str(legacy_cache)] if legacy_cache else []),
            *(['--native-cache', str(native_cache)] if native_cache else [])]


def channel_overrides(values: Sequence[str]) -> list[str]:
    """`--channels velocity=u,v` as the config override `data.channels.velocity=[u,v]` (`FIELD=` names a scalar field).

    Raises:
        ConfigError: a value not of the form FIELD=a,b,c.
    """
    result = []
    for value in values:
        name, sep, names = value.partition('=')
        channels = [c.strip() for c in names.split(',')] if names else []
        if not sep or not name.isidentifier() or any(not c.isidentifier() for c in channels):
            raise ConfigError(f"--channels (={value!r}) must be FIELD=a,b,c (or FIELD= for a scalar field), e.g. "
                              f"velocity=u,v")
        result.append(f"data.channels.{name}=[{','.join(channels)}]")
    return result
