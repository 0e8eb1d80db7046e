"""Which read-out of the M sampled label vectors gives the best-calibrated probabilities?

Every read-out here has one scalar fitted by NLL on the validation split (the temperature, or a
smoothing constant), so they compete on the same footing; the DCG's probabilities appear raw and
temperature-scaled beside them. Read-outs, from (M, N, K) sampled y_0:

- `mean_softmax_tempered`: softmax(log mean_m softmax(y_0) / T), what evaluate and predict report;
- `mean_of_tempered`: mean_m softmax(y_0 / T), the average of tempered per-sample distributions
  (how deep ensembles and MC dropout average members); its argmax can differ from the official one;
- `softmax_of_mean_y0`: softmax(mean_m y_0 / T);
- `clipped_mean_y0`: max(mean_m y_0, 0) + eps, normalised: y_0 regresses one-hot labels, so its
  mean over samples estimates the class probabilities directly;
- `votes_smoothed`: the vote distribution plus eps, normalised.

Reads the samples bench/samples_per_image.py cached (`<seed>/samples_<M>.npz`, drawn here when
absent) of each named bench/accuracy.py workdir:

    python bench/readouts.py --runs=aptos2019_32_port:/tmp/port24,aptos2019_32_priordrop05:/tmp/aptos32_pd05 \\
        [--samples=64] [--seeds=0,1,2]

Prints one table per run (validation NLL of the fitted read-out; test accuracy, ECE, NLL, AURC of
its normalised entropy and, for the same errors, the AURC of the DCG's 1 - max probability; test
images whose argmax differs from the official one, the mean of softmax(y_0)) and writes
bench/results/readouts_<first run>.json.
"""

import json
import math
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from scipy import optimize  # noqa: E402

from diffmic_jax import calibration, metrics  # noqa: E402


def _normalised(p, eps):
  p = p + eps
  return p / p.sum(-1, keepdims=True)


softmax = calibration.softmax
READOUTS = {
    'mean_softmax_tempered': lambda y, t: calibration.tempered(softmax(y).mean(0), t),
    'mean_of_tempered': lambda y, t: softmax(y / t).mean(0),
    'softmax_of_mean_y0': lambda y, t: softmax(y.mean(0) / t),
    'clipped_mean_y0': lambda y, eps: _normalised(np.clip(y.mean(0), 0, None), eps),
    'votes_smoothed': lambda y, eps: _normalised(calibration.vote_distribution(softmax(y)), eps),
}
_LOG_BOUNDS = (math.log(1e-4), math.log(1e3))


def nll(labels, probs) -> float:
  return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def fit(readout, y0, labels) -> float:
  """The readout's scalar (> 0) that minimises its NLL on these labelled samples."""
  res = optimize.minimize_scalar(lambda a: nll(labels, readout(y0, math.exp(a))),
                                 bounds=_LOG_BOUNDS, method='bounded', options={'xatol': 1e-5})
  return float(math.exp(res.x))


def _scores(labels, probs, official_pred, dcg_prob) -> dict:
  pred = probs.argmax(-1)
  m = metrics.classification_metrics(labels, probs, probs.shape[-1])
  right = pred == labels
  return {'accuracy': float(m['accuracy']), 'ece': float(m['ece']), 'nll': nll(labels, probs),
          'aurc': calibration.selective_curve(metrics.normalized_entropy(probs), right)['aurc'],
          # The same errors ranked by the DCG's confidence instead: does the read-out know more?
          'aurc_dcg_ranking': calibration.selective_curve(1 - dcg_prob.max(-1), right)['aurc'],
          'argmax_changed': int((pred != official_pred).sum())}


def compare(val, test) -> dict:
  """{read-out: fitted parameter, validation NLL, test scores} for one seed's two splits, each
  (sample_y0 [M, N, K], dcg_prob [N, K], labels [N])."""
  (y_v, dcg_v, l_v), (y_t, dcg_t, l_t) = val, test
  y_v, y_t = np.asarray(y_v, np.float64), np.asarray(y_t, np.float64)
  l_v, l_t = np.asarray(l_v).astype(int), np.asarray(l_t).astype(int)
  dcg_t = np.asarray(dcg_t, np.float64)
  official = softmax(y_t).mean(0).argmax(-1)
  out = {}
  for name, readout in READOUTS.items():
    a = fit(readout, y_v, l_v)
    out[name] = {'parameter': a, 'validation_nll': nll(l_v, readout(y_v, a)),
                 **_scores(l_t, readout(y_t, a), official, dcg_t)}
  t = calibration.fit_temperature(l_v, dcg_v)
  out['dcg'] = {'parameter': 1.0, 'validation_nll': nll(l_v, np.asarray(dcg_v, np.float64)),
                **_scores(l_t, dcg_t, official, dcg_t)}
  out['dcg_tempered'] = {'parameter': t, 'validation_nll': nll(l_v, calibration.tempered(dcg_v, t)),
                         **_scores(l_t, calibration.tempered(dcg_t, t), official, dcg_t)}
  return out


def over_seeds(per_seed: list[dict]) -> dict:
  keys = ('parameter', 'validation_nll', 'accuracy', 'ece', 'nll', 'aurc', 'aurc_dcg_ranking',
          'argmax_changed')
  return {name: {k: calibration.seed_summary([s[name][k] for s in per_seed]) for k in keys}
          for name in per_seed[0]}


def table(summary: dict) -> str:
  cell = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"
  lines = ['| read-out | fitted scalar | validation NLL | test accuracy | test ECE | test NLL | '
           'test AURC (entropy) | the same errors ranked by the DCG | test argmax changed |',
           '| --- ' * 9 + '|']
  for name, s in summary.items():
    lines.append(f'| {name} | ' + ' | '.join(cell(s[k]) for k in (
        'parameter', 'validation_nll', 'accuracy', 'ece', 'nll', 'aurc', 'aurc_dcg_ranking'))
        + f" | {s['argmax_changed']['mean']:.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  import samples_per_image  # Its draw() caches the samples this reads.
  f = flags.FLAGS
  runs = dict(r.split(':', 1) for r in f.runs.split(','))
  results = {}
  for name, workdir in runs.items():
    per_seed = []
    for s in f.seeds.split(','):
      got = samples_per_image.draw(pathlib.Path(workdir) / f'seed{s}', f.samples,
                                   ('validation', 'test'))
      per_seed.append(compare(got['validation'], got['test']))
    results[name] = {'workdir': workdir, 'summary': over_seeds(per_seed)}
    print(f'\n{name} ({workdir}; seeds {f.seeds}; {f.samples} samples per image)\n')
    print(table(results[name]['summary']))
  path = REPO / 'bench' / 'results' / f'readouts_{next(iter(runs))}.json'
  path.write_text(json.dumps({'samples': f.samples, 'seeds': f.seeds, 'runs': results}, indent=1))
  print(f'\nwrote {path}')


def _define_flags():
  flags.DEFINE_string('runs', None, 'name:workdir,... of bench/accuracy.py runs.', required=True)
  flags.DEFINE_integer('samples', 64, 'Samples per image.')
  flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
