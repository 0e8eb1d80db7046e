"""bench/samples_per_image.py's summary: each M reads the first M samples, with a temperature
fitted on validation from those same M."""

import numpy as np

from conftest import load_bench_script, sampled_split as _split
from diffmic_jax import calibration

spi = load_bench_script('samples_per_image')


def test_each_m_uses_its_first_samples_and_its_own_temperature():
  rng = np.random.default_rng(0)
  drawn = {f'seed{s}': {'validation': _split(rng, 300, 16), 'test': _split(rng, 400, 16)}
           for s in range(2)}
  by_m = spi.summarize(drawn, (1, 4, 16), 'test')
  for m in (1, 4, 16):
    for i, got in enumerate(drawn.values()):
      y_val, _, l_val = got['validation']
      t = calibration.fit_temperature(l_val, calibration.per_image(y_val[:m], 1.0)['mean_prob'])
      y, dcg, labels = got['test']
      direct = calibration.assess(labels, y[:m], dcg, t)
      assert by_m[m]['temperature']['values'][i] == t
      assert (by_m[m]['probabilities']['temperature']['nll']['values'][i]
              == direct['probabilities']['temperature']['nll'])
  # Averaging more samples removes noise: a better NLL and a better ranking of the errors.
  nll = [by_m[m]['probabilities']['temperature']['nll']['mean'] for m in (1, 4, 16)]
  aurc = [by_m[m]['uncertainty']['entropy_calibrated']['aurc']['mean'] for m in (1, 4, 16)]
  assert nll[0] > nll[1] > nll[2] and aurc[0] > aurc[2]
  table = spi.table(by_m)
  assert table.count('| diffusion, temperature-scaled |') == 3 and '| 1 |' in table
  assert table.splitlines()[2].endswith('| n/a | n/a |')  # CARD's measures need 2 samples.
