"""Whole training runs of the official code and of this port, side by side: one table, one plot.

Reads what three other scripts wrote for the same recipe and seeds:
- bench/official_train.py's JSON: the official trainer's runs (per-step and per-epoch losses, the
  checkpoint it chose on validation, then the test split with the official truncated chain and
  the image swap);
- this port's runs made by bench/accuracy.py (`--workdir`, one `seed<N>` per seed, their
  `metrics.jsonl` logged at every step with `--config.train.log_every_steps=1`);
- bench/diffusion_vs_dcg.py's JSON for those runs on the test split with the official chain and
  the same number of samples (`--split=test --config.eval.sampler=truncated`).

For each quantity it prints the mean ± standard deviation over each code's seeds, the difference
of the means and whether this port's mean lies inside the official runs' range (min-max over
seeds), and plots the per-epoch training losses of every seed of both codes.

    python bench/training_side_by_side.py --official=bench/results/official_train_aptos2019_32.json \\
        --port_workdir=/tmp/port32 --port_test=bench/results/diffusion_vs_dcg_aptos2019_32_port_test_truncated.json \\
        --name=aptos2019_32 [--plot=docs/parity_training_aptos2019_32.png]

Writes bench/results/training_side_by_side_<name>.json.
"""

import argparse
import json
import pathlib
import statistics

REPO = pathlib.Path(__file__).resolve().parents[1]

# (label, key in both codes' per-seed test results)
TEST_ROWS = [('DCG accuracy', 'dcg_accuracy'), ('DCG macro-F1', 'dcg_macro_f1'),
             ('diffusion accuracy', 'diffusion_accuracy'),
             ('diffusion macro-F1', 'diffusion_macro_f1'),
             ('diffusion agrees with its DCG', 'agreement'),
             ('diffusion accuracy, encoder shown another image', 'shuffled_encoder_accuracy')]


def _stats(values: list[float]) -> dict:
  return {'mean': statistics.fmean(values),
          'std': statistics.stdev(values) if len(values) > 1 else 0.0,
          'min': min(values), 'max': max(values), 'values': values}


def port_losses(seed_dir: pathlib.Path, joint_epochs: int) -> dict:
  """Per-epoch means of the noise loss and the DCG loss from a run logged at every step."""
  rows = [json.loads(line) for line in (seed_dir / 'metrics.jsonl').read_text().splitlines()]
  pre = [r for r in rows if 'train/dcg_ce' in r and 'train/loss' not in r]
  joint = [r for r in rows if 'train/loss' in r]
  steps = sorted({r['step'] for r in pre}) + sorted({r['step'] for r in joint})
  if steps != list(range(1, len(steps) + 1)):
    raise SystemExit(f'{seed_dir}/metrics.jsonl does not hold every step: train it with '
                     '--config.train.log_every_steps=1')
  if len(joint) % joint_epochs:
    raise SystemExit(f'{seed_dir}: {len(joint)} joint steps is not {joint_epochs} equal epochs')
  spe = len(joint) // joint_epochs

  def per_epoch(records, key):
    return [statistics.fmean(r[key] for r in records[i:i + spe])
            for i in range(0, len(records), spe)]

  return {'steps_per_epoch': spe, 'noise_loss_per_epoch': per_epoch(joint, 'train/loss'),
          'dcg_pretrain_loss_per_epoch': per_epoch(pre, 'train/dcg_ce'),
          'dcg_joint_loss_per_epoch': per_epoch(joint, 'train/dcg_ce')}


def compare(official: dict, port_test: dict, port_workdir: pathlib.Path) -> dict:
  """Each code over its own seeds: seeds of two codes are not paired, only their spreads compare."""
  seeds = {'official': [str(s) for s in official['seeds']],
           'port': [str(s) for s in port_test['seeds']]}
  joint_epochs = len(official['per_seed'][seeds['official'][0]]['noise_loss_per_epoch'])
  losses = {'official': {s: {k: official['per_seed'][s][k] for k in (
      'steps_per_epoch', 'noise_loss_per_epoch', 'dcg_pretrain_loss_per_epoch',
      'dcg_joint_loss_per_epoch')} for s in seeds['official']},
            'port': {s: port_losses(port_workdir / f'seed{s}', joint_epochs)
                     for s in seeds['port']}}
  tests = {'official': official['per_seed'], 'port': port_test['per_seed']}
  rows = []
  for label, key in TEST_ROWS + [('noise loss, last joint epoch', 'noise_loss_per_epoch'),
                                 ('DCG loss, last joint epoch', 'dcg_joint_loss_per_epoch')]:
    if key.endswith('_per_epoch'):
      off, ours = (_stats([losses[c][s][key][-1] for s in seeds[c]]) for c in ('official', 'port'))
    else:
      off, ours = (_stats([tests[c][s][key] for s in seeds[c]]) for c in ('official', 'port'))
    rows.append({'quantity': label, 'key': key, 'official': off, 'port': ours,
                 'difference': ours['mean'] - off['mean'],
                 'port_mean_inside_official_range': off['min'] <= ours['mean'] <= off['max']})
  n = {c: tests[c][seeds[c][0]]['n'] for c in ('official', 'port')}
  if n['official'] != n['port']:
    raise SystemExit(f'the two test splits differ in size: {n}')
  return {'seeds': seeds, 'n_test': n['port'], 'rows': rows, 'losses': losses}


def plot(result: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  styles = {'official': dict(color='tab:red', ls='--'), 'port': dict(color='tab:blue', ls='-')}
  for code, by_seed in result['losses'].items():
    for i, (seed, run) in enumerate(by_seed.items()):
      label = f'{"official code" if code == "official" else "this port"}' if i == 0 else None
      pre, joint = run['dcg_pretrain_loss_per_epoch'], run['dcg_joint_loss_per_epoch']
      axes[0].plot(range(1, len(run['noise_loss_per_epoch']) + 1), run['noise_loss_per_epoch'],
                   marker='o', ms=3, label=label, **styles[code])
      axes[1].plot(range(1, len(pre) + len(joint) + 1), pre + joint, marker='o', ms=3,
                   label=label, **styles[code])
      axes[1].axvline(len(pre) + 0.5, color='grey', lw=0.5)
  axes[0].set(title='noise loss (MSE + 0.5 MMD), mean per joint epoch', xlabel='joint epoch')
  axes[1].set(title='DCG cross-entropy, mean per epoch', xlabel='epoch (pre-training | joint)')
  for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--official', required=True, help="bench/official_train.py's JSON")
  p.add_argument('--port_workdir', required=True, help="bench/accuracy.py's --workdir")
  p.add_argument('--port_test', required=True,
                 help="bench/diffusion_vs_dcg.py's JSON: test split, official chain")
  p.add_argument('--name', required=True)
  p.add_argument('--plot', default=None, help='PNG of the per-epoch losses')
  args = p.parse_args()
  official = json.loads(pathlib.Path(args.official).read_text())
  port_test = json.loads(pathlib.Path(args.port_test).read_text())
  if port_test['split'] != 'test':
    raise SystemExit(f'{args.port_test} is on the {port_test["split"]!r} split, not test')
  result = compare(official, port_test, pathlib.Path(args.port_workdir))
  result.update(official_json=args.official, port_test_json=args.port_test,
                port_workdir=args.port_workdir, port_sampler=port_test['per_seed'][
                    result['seeds']['port'][0]]['sampler'])
  print(f'test split (n = {result["n_test"]}); official seeds {result["seeds"]["official"]}, '
        f'port seeds {result["seeds"]["port"]}; port chain: {result["port_sampler"]}')
  print(f'{"quantity":50s} {"official":>17s} {"this port":>17s} {"port - off.":>11s}  inside')
  for r in result['rows']:
    o, q = r['official'], r['port']
    print(f'{r["quantity"]:50s} {o["mean"]:8.4f} ± {o["std"]:.4f} {q["mean"]:8.4f} ± {q["std"]:.4f} '
          f'{r["difference"]:+11.4f}  {"yes" if r["port_mean_inside_official_range"] else "no"}')
  print(f'\n| test split, n = {result["n_test"]} | official code ({len(result["seeds"]["official"])} '
        f'seeds) | this port ({len(result["seeds"]["port"])} seeds) | port - official | port mean '
        'inside the official range |\n| --- | --- | --- | --- | --- |')
  for r in result['rows']:
    o, q = r['official'], r['port']
    print(f'| {r["quantity"]} | {o["mean"]:.3f} ± {o["std"]:.3f} ({o["min"]:.3f}-{o["max"]:.3f}) | '
          f'{q["mean"]:.3f} ± {q["std"]:.3f} | {r["difference"]:+.3f} | '
          f'{"yes" if r["port_mean_inside_official_range"] else "no"} |')
  if args.plot:
    plot(result, pathlib.Path(args.plot))
    print(f'wrote {args.plot}')
  out = REPO / 'bench' / 'results' / f'training_side_by_side_{args.name}.json'
  out.write_text(json.dumps(result, indent=2))
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
