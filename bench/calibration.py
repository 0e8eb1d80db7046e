"""Calibration and error ranking over seeds, from the reports of a bench/accuracy.py run.

Reads each seed's report (`<workdir>/seed<N>/resample_<sampler>/eval/step_*/<split>/report.json`
when `bench/accuracy.py --resample=<sampler>` made one, else `<workdir>/seed<N>/reports/<split>.json`),
prints, as markdown, mean ± std over seeds of every probability's ECE / NLL / Brier / AUC and every
uncertainty's AURC and half accuracies (diffmic_jax/calibration.py), and plots the selective
curves (accuracy against coverage) of the reported uncertainty and of the DCG's max probability,
averaged over seeds:

    python bench/calibration.py --workdir=/tmp/aptos32 --name=aptos2019_32 [--sampler=matched]

Writes bench/results/calibration_<name>.json and docs/selective_<name>_<split>.png.
"""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from diffmic_jax import calibration  # noqa: E402


_PROBS = {'dcg': 'DCG alone', 'mean': 'diffusion: mean softmax(y_0) (official)',
          'temperature': 'diffusion: temperature-scaled (reported)',
          'vote': 'diffusion: vote distribution'}
_UNC = {'entropy_calibrated': 'diffusion: entropy of the temperature-scaled probability (reported)',
        'entropy_mean': 'diffusion: entropy of mean softmax(y_0) (the former `uncertainty`)',
        'one_minus_max_calibrated': 'diffusion: 1 - max temperature-scaled probability',
        'one_minus_vote_agreement': 'diffusion: 1 - vote agreement',
        'interval_width': "diffusion: CARD's 95% interval width of the predicted class's y_0",
        'ttest_p': "diffusion: CARD's paired t-test p-value, top two classes",
        'dcg_one_minus_max': 'DCG: 1 - max probability', 'dcg_entropy': 'DCG: entropy'}


def reports(workdir: pathlib.Path, sampler: str, split: str) -> dict[str, dict]:
  """{seed folder: report} for every seed with a report of `split` holding calibration."""
  out = {}
  for seed in sorted(workdir.glob('seed*')):
    found = sorted(seed.glob(f'resample_{sampler}/eval/step_*/{split}/report.json')) or [
        seed / 'reports' / f'{split}.json']
    if found[-1].exists() and 'calibration' in (r := json.loads(found[-1].read_text())):
      out[seed.name] = r
  return out


def _cell(s: dict) -> str:
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


def tables(cal: dict) -> str:
  lines = ['| probabilities | accuracy | ECE | NLL | Brier | AUC (OvR) |',
           '| --- | --- | --- | --- | --- | --- |']
  for k, v in cal['probabilities'].items():
    lines.append(f'| {_PROBS.get(k, k)} | ' + ' | '.join(
        _cell(v[m]) for m in ('accuracy', 'ece', 'nll', 'brier', 'auc_ovr_macro')) + ' |')
  lines += ['', '| uncertainty | AURC | accuracy, most certain half | least certain half | '
                'min / median / max (mean over seeds) |', '| --- | --- | --- | --- | --- |']
  for k, v in cal['uncertainty'].items():
    spread = ' / '.join(f"{v[f'spread_{m}']['mean']:.2f}" for m in ('min', 'median', 'max'))
    lines.append(f'| {_UNC.get(k, k)} | ' + ' | '.join(
        _cell(v[m]) for m in ('aurc', 'accuracy_certain_half', 'accuracy_uncertain_half'))
        + f' | {spread} |')
  return '\n'.join(lines)


def plot(runs: dict[str, dict], path: pathlib.Path, title: str) -> None:
  """Mean over seeds of the selective curves, on a common coverage grid."""
  grid = np.linspace(0.01, 1, 100)
  fig, ax = plt.subplots(figsize=(5, 4))
  first = next(iter(runs.values()))['calibration']
  for key, style in ((first['chosen']['uncertainty'], '-'), ('dcg_one_minus_max', '--')):
    curves = [np.interp(grid, r['calibration']['selective'][key]['coverage'],
                        r['calibration']['selective'][key]['accuracy']) for r in runs.values()]
    aurc = [r['calibration']['uncertainty'][key]['aurc'] for r in runs.values()]
    ax.plot(grid, np.mean(curves, 0), style,
            label=f'{_UNC.get(key, key)}\nAURC {np.mean(aurc):.3f} ± {np.std(aurc, ddof=1) if len(aurc) > 1 else 0:.3f}')
  ax.set(xlabel='coverage (most certain images kept)', ylabel='accuracy', xlim=(0, 1),
         title=title)
  ax.legend(loc='lower left', fontsize=6)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  workdir = pathlib.Path(f.workdir)
  out = {'workdir': str(workdir), 'sampler': f.sampler, 'splits': {}}
  for split in f.splits.split(','):
    runs = reports(workdir, f.sampler, split)
    if not runs:
      print(f'{split}: no report with calibration under {workdir}')
      continue
    summary = calibration.over_seeds([r['calibration'] for r in runs.values()])
    print(f"\n{split}: seeds {list(runs)}; T = {_cell(summary['temperature'])}; "
          f"protocol (first seed): {next(iter(runs.values()))['protocol']}\n")
    print(tables(summary))
    figure = REPO / 'docs' / f'selective_{f.name}_{split}.png'
    plot(runs, figure, f'{f.name}, {split}, {len(runs)} seed(s)')
    out['splits'][split] = {'seeds': list(runs), 'summary': summary, 'figure': str(figure.relative_to(REPO))}
  path = REPO / 'bench' / 'results' / f'calibration_{f.name}.json'
  path.write_text(json.dumps(out, indent=1))
  print(f'\nwrote {path}')


def _define_flags():
  """Only when run as a script, like the other bench scripts whose helpers tests import."""
  flags.DEFINE_string('workdir', None, 'A bench/accuracy.py workdir (seed<N>/ under it).', required=True)
  flags.DEFINE_string('name', None, 'Result name.', required=True)
  flags.DEFINE_string('sampler', 'matched', 'The --resample sampler whose reports are read, if any.')
  flags.DEFINE_string('splits', 'validation,test', 'Splits summarised.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
