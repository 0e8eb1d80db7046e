"""Accuracy over seeds: DiffMIC against its own DCG, checkpoint chosen on validation, test once.

Runs the main job once per seed (each in its own process and workdir; `--parallel=N` runs N at
once, for an accelerator that one small run leaves idle), then reads each run's
`reports/<split>.json` and prints mean and standard deviation over seeds for the DCG alone and for
the diffusion (mean probability), with the protocol line of the runs:

    python bench/accuracy.py --config=configs/demo.py --seeds=0,1,2 --workdir=/tmp/acc \
        [--config.train.epochs=40 --config.model.width=64 ...]

Config overrides take main's form, `--config.FIELD=VALUE`; they are checked here before any run
starts and passed on to every run.

`--resample=truncated,matched,full` then re-evaluates each seed's validation-chosen checkpoint with
each of those samplers on the validation split and on --split (`--mode=evaluate`, written to
`<seed workdir>/resample_<sampler>/eval/step_<N>/<split>/`), and summarises them per sampler: the
validation columns are where a sampler may honestly be chosen.

Writes bench/results/accuracy_<name>.json (or --out). Long: run it in the background with a log.
A seed whose run fails is reported with its log's path and left out of the summary, never hidden.
"""

import concurrent.futures
import json
import pathlib
import statistics
import subprocess
import sys
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffmic_jax import calibration, config_check  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Config file (configs/*.py[:arg]).',
                                lock_config=True)
flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds.')
flags.DEFINE_string('workdir', None, 'Runs go to <workdir>/seed<N>.', required=True)
flags.DEFINE_string('split', 'test', 'The split each run reports.')
flags.DEFINE_string('name', None, "Result name (default: the config file's name).")
flags.DEFINE_integer('parallel', 1, 'Seeds run at once.')
flags.DEFINE_string('out', None, 'JSON path (default bench/results/accuracy_<name>.json).')
flags.DEFINE_string('resample', '', 'Samplers to re-evaluate the chosen checkpoints with.')
flags.DEFINE_string('val_split', 'validation', 'The validation split.')
METRICS = ('accuracy', 'macro_f1', 'balanced_accuracy', 'kappa_quadratic', 'auc_ovr_macro')


def _main_cmd(args, work: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, '-m', 'diffmic_jax.main', f'--config={args.config}', f'--workdir={work}',
          *extra, *args.override]


def prepare(args) -> None:
  """Builds the dataset once, before seeds run side by side (parallel builds would race)."""
  work = pathlib.Path(args.workdir) / 'prepare'
  with open(pathlib.Path(args.workdir) / 'prepare.log', 'w') as log:
    subprocess.run(_main_cmd(args, work, '--mode=prepare'), cwd=REPO, stdout=log,
                   stderr=subprocess.STDOUT, check=True)


def run_seed(args, seed: int) -> dict | None:
  work = pathlib.Path(args.workdir) / f'seed{seed}'
  report = work / 'reports' / f'{args.split}.json'
  if not report.exists():
    log_path = pathlib.Path(args.workdir) / f'seed{seed}.log'
    with open(log_path, 'w') as log:
      done = subprocess.run(_main_cmd(args, work, f'--config.seed={seed}'), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    if done.returncode != 0:
      print(f'seed {seed} failed (exit {done.returncode}); see {log_path}', flush=True)
      return None
  return json.loads(report.read_text())


def resample(args, seed: int, sampler: str) -> dict[str, dict]:
  """A finished seed's chosen checkpoint evaluated with `sampler` on the validation and --split."""
  work = pathlib.Path(args.workdir) / f'seed{seed}'
  saved = work / f'resample_{sampler}'
  if not saved.exists():
    cmd = _main_cmd(args, work, '--mode=evaluate', '--checkpoint=best', f'--config.seed={seed}') + [
        f'--output_dir={saved}', f'--config.eval.sampler={sampler}',
        f"--config.eval.splits=('{args.val_split}','{args.split}')"]
    with open(pathlib.Path(args.workdir) / f'seed{seed}_{sampler}.log', 'w') as log:
      subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
  return {split: json.loads(next(saved.glob(f'eval/step_*/{split}/report.json')).read_text())
          for split in (args.val_split, args.split)}


def _stats(vals: list) -> dict:
  return {'mean': statistics.mean(vals), 'std': statistics.stdev(vals) if len(vals) > 1 else 0.0,
          'values': vals}


def summarise(results: list[dict]) -> dict:
  out = {}
  for who in ('dcg', 'diffusion', 'vote'):
    out[who] = {}
    for m in METRICS:
      vals = [r[who][m] for r in results if r[who][m] is not None]
      out[who][m] = _stats(vals)
  if all('calibration' in r for r in results):
    out['calibration'] = calibration.over_seeds([r['calibration'] for r in results])
  return out


def print_calibration(cal: dict, split: str) -> None:
  cell = lambda s: f"{s['mean']:.4f} ± {s['std']:.4f}"
  print(f"\n{split}: probabilities (T = {cell(cal['temperature'])})")
  print(f"{'':16s} " + ' '.join(f'{m:>18s}' for m in ('ECE', 'NLL', 'Brier', 'AUC')))
  for k, v in cal['probabilities'].items():
    print(f'{k:16s} ' + ' '.join(f'{cell(v[m]):>18s}' for m in ('ece', 'nll', 'brier', 'auc_ovr_macro')))
  print(f"{split}: uncertainty")
  print(f"{'':26s} " + ' '.join(f'{m:>18s}' for m in ('AURC', 'certain half', 'uncertain half',
                                                       'median')))
  for k, v in cal['uncertainty'].items():
    print(f'{k:26s} ' + ' '.join(f'{cell(v[m]):>18s}' for m in (
        'aurc', 'accuracy_certain_half', 'accuracy_uncertain_half', 'spread_median')))


def parse_args() -> types.SimpleNamespace:
  """The flags, with the config file argument and the `--config.*` overrides as given."""
  f = flags.FLAGS
  config_check.validate(f.config)
  given = [a for a in sys.argv[1:] if a.startswith('--config=')]
  config = given[-1].split('=', 1)[1] if given else f['config'].default_as_str.strip("'")
  overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
  return types.SimpleNamespace(config=config, override=overrides, seeds=f.seeds, workdir=f.workdir,
                               split=f.split, name=f.name, parallel=f.parallel, out=f.out,
                               resample=f.resample, val_split=f.val_split)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  args = parse_args()
  pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
  prepare(args)
  seeds = [int(s) for s in args.seeds.split(',')]
  with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
    finished = list(pool.map(lambda s: run_seed(args, s), seeds))
  failed = [s for s, r in zip(seeds, finished) if r is None]
  seeds = [s for s, r in zip(seeds, finished) if r is not None]
  results = [r for r in finished if r is not None]
  if not results:
    raise SystemExit(f'every seed failed; logs in {args.workdir}')
  summary = summarise(results)
  print(f'{args.config} {" ".join(args.override)}; split {args.split}; seeds {seeds}'
        + (f'; FAILED seeds {failed}' if failed else ''))
  print(f'protocol (seed {seeds[0]}): {results[0]["protocol"]}')
  print(f"{'metric':20s} {'DCG alone':>18s} {'diffusion':>18s} {'vote':>18s}")
  for m in METRICS:
    cells = [f"{summary[w][m]['mean']:.4f} ± {summary[w][m]['std']:.4f}" for w in ('dcg', 'diffusion', 'vote')]
    print(f'{m:20s} ' + ' '.join(f'{c:>18s}' for c in cells))
  if 'calibration' in summary:
    print_calibration(summary['calibration'], args.split)
  by_sampler = {}
  for sampler in [x for x in args.resample.split(',') if x]:
    per_seed = [resample(args, s, sampler) for s in seeds]
    by_sampler[sampler] = {split: summarise([r[split] for r in per_seed])
                           for split in (args.val_split, args.split)}
  if by_sampler:
    print(f"\n{'diffusion, by sampler':22s} {args.val_split + ' acc':>18s} {args.split + ' acc':>18s} "
          f"{'macro_f1':>18s} {'kappa_quadratic':>18s} {'auc_ovr_macro':>18s}")
    for sampler, res in by_sampler.items():
      cells = [res[args.val_split]['diffusion']['accuracy']] + [
          res[args.split]['diffusion'][m] for m in ('accuracy', 'macro_f1', 'kappa_quadratic', 'auc_ovr_macro')]
      print(f'{sampler:22s} ' + ' '.join(f"{c['mean']:.4f} ± {c['std']:.4f}".rjust(18) for c in cells))
    for sampler, res in by_sampler.items():
      for split in (args.val_split, args.split):
        if 'calibration' in res[split]:
          print_calibration(res[split]['calibration'], f'{sampler}, {split}')
  name = args.name or pathlib.Path(args.config.split(':')[0]).stem
  out = pathlib.Path(args.out or REPO / 'bench' / 'results' / f'accuracy_{name}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'config': args.config, 'overrides': args.override, 'split': args.split,
                             'seeds': seeds, 'failed_seeds': failed, 'protocol': results[0]['protocol'],
                             'summary': summary, 'by_sampler': by_sampler}, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
