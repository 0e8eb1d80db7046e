"""Accuracy over seeds: DiffMIC against its own DCG, checkpoint chosen on validation, test once.

Runs the main job once per seed (each in its own process and workdir; `--parallel=N` runs N at
once, for an accelerator that one small run leaves idle), then reads each run's
`reports/<split>.json` and prints mean and standard deviation over seeds for the DCG alone and for
the diffusion (mean probability), with the protocol line of the runs:

    python bench/accuracy.py --config=configs/demo.py --seeds=0,1,2 --workdir=/tmp/acc \
        [--override=train.epochs=40 --override=model.width=64 ...]

`--resample=truncated,matched,full` then re-evaluates each seed's validation-chosen checkpoint with
each of those samplers on the validation split and on --split (`--mode=evaluate`, written to
`<seed workdir>/resample_<sampler>/eval/step_<N>/<split>/`), and summarises them per sampler: the
validation columns are where a sampler may honestly be chosen.

Writes bench/results/accuracy_<name>.json (or --out). Long: run it in the background with a log.
A seed whose run fails is reported with its log's path and left out of the summary, never hidden.
"""

import argparse
import concurrent.futures
import json
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = ('accuracy', 'macro_f1', 'balanced_accuracy', 'kappa_quadratic', 'auc_ovr_macro')


def _main_cmd(args, work: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, '-m', 'diffmic_jax.main', f'--config={args.config}', f'--workdir={work}',
          *extra] + [f'--config.{o}' for o in args.override]


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


def summarise(results: list[dict]) -> dict:
  out = {}
  for who in ('dcg', 'diffusion', 'vote'):
    out[who] = {}
    for m in METRICS:
      vals = [r[who][m] for r in results if r[who][m] is not None]
      out[who][m] = {'mean': statistics.mean(vals), 'std': statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     'values': vals}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/demo.py')
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--workdir', required=True)
  p.add_argument('--split', default='test')
  p.add_argument('--override', action='append', default=[], help='config field=value, repeatable')
  p.add_argument('--name', default=None)
  p.add_argument('--parallel', type=int, default=1, help='seeds run at once')
  p.add_argument('--out', default=None, help='JSON path (default bench/results/accuracy_<name>.json)')
  p.add_argument('--resample', default='', help='samplers to re-evaluate the chosen checkpoints with')
  p.add_argument('--val_split', default='validation')
  args = p.parse_args()
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
  name = args.name or pathlib.Path(args.config.split(':')[0]).stem
  out = pathlib.Path(args.out or REPO / 'bench' / 'results' / f'accuracy_{name}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'config': args.config, 'overrides': args.override, 'split': args.split,
                             'seeds': seeds, 'failed_seeds': failed, 'protocol': results[0]['protocol'],
                             'summary': summary, 'by_sampler': by_sampler}, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
