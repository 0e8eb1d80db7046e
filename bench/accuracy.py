"""Accuracy over seeds: DiffMIC against its own DCG, checkpoint chosen on validation, test once.

Runs the main job once per seed (each in its own process and workdir), then reads each run's
`reports/<split>.json` and prints mean and standard deviation over seeds for the DCG alone and for
the diffusion (mean probability), with the protocol line of the runs:

    python bench/accuracy.py --config=configs/demo.py --seeds=0,1,2 --workdir=/tmp/acc \
        [--override=train.epochs=40 --override=model.width=64 ...]

Writes bench/results/accuracy_<name>.json. Long: run it in the background with a log.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
METRICS = ('accuracy', 'macro_f1', 'balanced_accuracy', 'kappa_quadratic', 'auc_ovr_macro')


def run_seed(args, seed: int) -> dict:
  work = pathlib.Path(args.workdir) / f'seed{seed}'
  cmd = [sys.executable, '-m', 'diffmic_jax.main', f'--config={args.config}', f'--workdir={work}',
         f'--config.seed={seed}'] + [f'--config.{o}' for o in args.override]
  if not (work / 'reports' / f'{args.split}.json').exists():
    with open(pathlib.Path(args.workdir) / f'seed{seed}.log', 'w') as log:
      subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
  return json.loads((work / 'reports' / f'{args.split}.json').read_text())


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
  args = p.parse_args()
  pathlib.Path(args.workdir).mkdir(parents=True, exist_ok=True)
  seeds = [int(s) for s in args.seeds.split(',')]
  results = [run_seed(args, s) for s in seeds]
  summary = summarise(results)
  print(f'{args.config} {" ".join(args.override)}; split {args.split}; seeds {seeds}')
  print(f'protocol (seed {seeds[0]}): {results[0]["protocol"]}')
  print(f"{'metric':20s} {'DCG alone':>18s} {'diffusion':>18s} {'vote':>18s}")
  for m in METRICS:
    cells = [f"{summary[w][m]['mean']:.4f} ± {summary[w][m]['std']:.4f}" for w in ('dcg', 'diffusion', 'vote')]
    print(f'{m:20s} ' + ' '.join(f'{c:>18s}' for c in cells))
  name = args.name or pathlib.Path(args.config).stem
  out = REPO / 'bench' / 'results' / f'accuracy_{name}.json'
  out.write_text(json.dumps({'config': args.config, 'overrides': args.override, 'split': args.split,
                             'seeds': seeds, 'protocol': results[0]['protocol'], 'summary': summary},
                            indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
