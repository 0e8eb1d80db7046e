"""One markdown table for training variants of one recipe, from what three benchmarks wrote.

For each result name: bench/accuracy.py's test accuracies (`accuracy_<name>.json`),
bench/diffusion_vs_dcg.py's validation comparison with the encoder shown another image
(`diffusion_vs_dcg_<name>.json`), and bench/samples_per_image.py's test calibration and error
ranking at --samples samples per image (`samples_<name>.json`):

    python bench/variants_table.py --rows=aptos2019_32_port:"official loss",aptos2019_32_priordrop05:"prior dropout 0.5" \\
        [--swap_names=aptos2019_32_port:aptos2019_32_port_matched] [--samples=64]

`--swap_names` maps a row to another diffusion_vs_dcg result name when its runs were compared
under another name. Prints the table and writes bench/results/variants_<first name>.json.
"""

import json
import pathlib
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / 'bench' / 'results'


def _cell(s: dict) -> str:
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


def row(name: str, swap_name: str, samples: int) -> dict:
  acc = json.loads((RESULTS / f'accuracy_{name}.json').read_text())['summary']
  swap = json.loads((RESULTS / f'diffusion_vs_dcg_{swap_name}.json').read_text())
  cal = json.loads((RESULTS / f'samples_{name}.json').read_text())['by_samples'][str(samples)]
  s = swap['summary']
  return {
      'validation': {k: s[k] for k in ('dcg_accuracy', 'diffusion_accuracy',
                                       'shuffled_encoder_accuracy', 'agreement')},
      'validation_samples': swap['config']['eval']['num_samples'],
      'test': {'dcg_accuracy': acc['dcg']['accuracy'], 'diffusion_accuracy': acc['diffusion']['accuracy']},
      'test_calibration': {
          'ece': cal['probabilities']['temperature']['ece'],
          'nll': cal['probabilities']['temperature']['nll'],
          'aurc': cal['uncertainty']['entropy_calibrated']['aurc'],
          'dcg_ece': cal['probabilities']['dcg']['ece'],
          'dcg_nll': cal['probabilities']['dcg']['nll'],
          'dcg_aurc': cal['uncertainty']['dcg_one_minus_max']['aurc']},
  }


def table(rows: dict[str, tuple[str, dict]], samples: int) -> str:
  lines = ['| variant | val: DCG | val: diffusion | val: encoder shown another image | '
           'val: agrees with DCG | test: DCG | test: diffusion | '
           f'test, {samples} samples: ECE (DCG) | NLL (DCG) | AURC (DCG) |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for label, r in rows.values():
    v, t, c = r['validation'], r['test'], r['test_calibration']
    lines.append(
        f'| {label} | ' + ' | '.join(_cell(v[k]) for k in (
            'dcg_accuracy', 'diffusion_accuracy', 'shuffled_encoder_accuracy', 'agreement'))
        + ' | ' + ' | '.join(_cell(t[k]) for k in ('dcg_accuracy', 'diffusion_accuracy'))
        + ' | ' + ' | '.join(f"{_cell(c[k])} ({c['dcg_' + k]['mean']:.3f})"
                             for k in ('ece', 'nll', 'aurc')) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  swaps = dict(p.split(':', 1) for p in f.swap_names.split(',') if p)
  rows = {}
  for pair in f.rows.split(','):
    name, label = pair.split(':', 1)
    rows[name] = (label, row(name, swaps.get(name, name), f.samples))
  print(table(rows, f.samples))
  out = RESULTS / f'variants_{next(iter(rows))}.json'
  out.write_text(json.dumps({'samples': f.samples, 'rows': {
      n: {'label': label, **r} for n, (label, r) in rows.items()}}, indent=1))
  print(f'\nwrote {out}', file=sys.stderr)


def _define_flags():
  """Only when run as a script: tests import the helpers beside modules with flags of their own."""
  flags.DEFINE_string('rows', None, 'Comma-separated name:label pairs, in table order.', required=True)
  flags.DEFINE_string('swap_names', '', 'Comma-separated name:diffusion_vs_dcg name pairs.')
  flags.DEFINE_integer('samples', 64, 'Samples per image of the calibration columns.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
