"""Probabilities and error ranking against the number of samples per image.

The diffusion's read-outs are averages over M sampled label vectors per image; each sample carries
the chain's noise, which blurs the order of the images' confidences. For each seed of a
bench/accuracy.py run, this draws max(--samples) samples per image from the validation-chosen
checkpoint (on the validation and test splits, once, kept in `<seed>/samples_<M>.npz`), then for
each M in --samples uses the first M: the temperature fitted on validation with those M, and the
test split's calibration and error ranking (diffmic_jax/calibration.py), beside the DCG's:

    python bench/samples_per_image.py --workdir=/tmp/aptos32 --name=aptos2019_32 \\
        --samples=1,4,16,64 [--seeds=0,1,2] [--split=test]

Prints a markdown table (mean ± std over seeds) and writes bench/results/samples_<name>.json.
"""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from diffmic_jax import calibration, data, evaluate, run_config  # noqa: E402


def draw(seed_dir: pathlib.Path, m: int, splits: tuple[str, ...]) -> dict:
  """{split: (sample_y0 [M, N, K], dcg_prob [N, K], labels [N])} of the chosen checkpoint."""
  cache = seed_dir / f'samples_{m}.npz'
  if not cache.exists():
    from diffmic_jax.inference import Classifier  # Loads JAX only when sampling is needed.
    config = run_config.load(str(seed_dir))
    config.unlock()
    config.eval.num_samples = m
    clf = Classifier.from_workdir(str(seed_dir), 'best', config)
    arrays = {}
    for split in splits:
      pred = evaluate._classify(clf, evaluate._eval_batches(config, split),
                                data.num_examples(config.data, split), f'{split}, {m} samples')
      arrays.update({f'{split}/{k}': np.asarray(pred[k]) for k in ('sample_y0', 'dcg_prob', 'label')})
    np.savez_compressed(cache, **arrays)
  got = np.load(cache)
  return {s: (got[f'{s}/sample_y0'], got[f'{s}/dcg_prob'], got[f'{s}/label']) for s in splits}


def summarize(drawn: dict, ms, split: str) -> dict:
  """{M: calibration.over_seeds of each seed's `split` assessed with its first M samples and the
  temperature fitted on its validation split with the same M samples}."""
  by_m = {}
  for m in ms:
    assessed = []
    for got in drawn.values():
      y_val, _, l_val = got['validation']
      t = calibration.fit_temperature(l_val, calibration.per_image(y_val[:m], 1.0)['mean_prob'])
      y, dcg, labels = got[split]
      assessed.append(calibration.assess(labels, y[:m], dcg, t))
    by_m[m] = calibration.over_seeds(assessed)
  return by_m


def _cell(s: dict) -> str:
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


def table(by_m: dict) -> str:
  lines = ['| read-out | samples M | accuracy | ECE | NLL | Brier | AURC (entropy) | '
           "AURC (CARD's interval width) | AURC (CARD's t-test) |",
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for m, s in by_m.items():
    p, u = s['probabilities']['temperature'], s['uncertainty']
    card = [_cell(u[k]['aurc']) if m > 1 else 'n/a' for k in ('interval_width', 'ttest_p')]
    lines.append(f'| diffusion, temperature-scaled | {m} | ' + ' | '.join(
        _cell(p[k]) for k in ('accuracy', 'ece', 'nll', 'brier')) + ' | '
        + ' | '.join([_cell(u['entropy_calibrated']['aurc']), *card]) + ' |')
  s = next(iter(by_m.values()))
  p = s['probabilities']['dcg']
  lines.append('| DCG alone (1 - max probability) | | ' + ' | '.join(
      _cell(p[k]) for k in ('accuracy', 'ece', 'nll', 'brier'))
      + f" | {_cell(s['uncertainty']['dcg_one_minus_max']['aurc'])} | | |")
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  workdir, ms = pathlib.Path(f.workdir), sorted(int(m) for m in f.samples.split(','))
  seeds = [workdir / f'seed{s}' for s in f.seeds.split(',')]
  drawn = {s.name: draw(s, ms[-1], ('validation', f.split)) for s in seeds}
  by_m = summarize(drawn, ms, f.split)
  print(f'\n{f.split} split; seeds {list(drawn)}; temperature fitted on validation with the same M\n')
  print(table(by_m))
  path = REPO / 'bench' / 'results' / f'samples_{f.name}.json'
  path.write_text(json.dumps({'workdir': str(workdir), 'split': f.split, 'seeds': list(drawn),
                              'by_samples': {str(m): v for m, v in by_m.items()}}, indent=1))
  print(f'\nwrote {path}')


def _define_flags():
  """Only when run as a script: tests import the helpers beside modules with flags of their own."""
  flags.DEFINE_string('workdir', None, 'A bench/accuracy.py workdir (seed<N>/ under it).', required=True)
  flags.DEFINE_string('name', None, 'Result name.', required=True)
  flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds.')
  flags.DEFINE_string('samples', '1,4,16,64', 'Numbers of samples per image compared.')
  flags.DEFINE_string('split', 'test', 'The split assessed (the temperature is fitted on validation).')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
