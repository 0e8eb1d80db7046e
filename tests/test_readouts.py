"""bench/readouts.py: each read-out's scalar is fitted on validation alone, the official read-out
never moves the argmax, and a read-out that sharpens the spread samples wins where it should."""

import numpy as np

from conftest import load_bench_script, sampled_split as _split
from diffmic_jax import calibration

ro = load_bench_script('readouts')


def test_fitted_scalars_come_from_validation_and_the_official_argmax_stays():
  rng = np.random.default_rng(0)
  val, test = _split(rng, 300, 8), _split(rng, 400, 8)
  got = ro.compare(val, test)
  assert set(got) == {*ro.READOUTS, 'dcg', 'dcg_tempered'}
  # The official read-out's scalar is calibration's temperature on the same validation samples.
  t = calibration.fit_temperature(val[2], calibration.per_image(val[0], 1.0)['mean_prob'])
  assert abs(got['mean_softmax_tempered']['parameter'] - t) < 1e-3 * t
  assert got['mean_softmax_tempered']['argmax_changed'] == 0
  # Shuffling the test labels changes every test score but no fitted scalar.
  shuffled = ro.compare(val, (test[0], test[1], rng.permutation(test[2])))
  for name in ro.READOUTS:
    assert shuffled[name]['parameter'] == got[name]['parameter']
    assert shuffled[name]['validation_nll'] == got[name]['validation_nll']
    assert shuffled[name]['nll'] > got[name]['nll'] + 0.1
  # Each fitted scalar is a minimum of the validation NLL.
  for name, readout in ro.READOUTS.items():
    a = got[name]['parameter']
    for f in (0.8, 1.25):
      assert ro.nll(val[2], readout(val[0], a * f)) >= got[name]['validation_nll'] - 1e-9
  # The DCG's samples-free probabilities: tempering them cannot lose on validation.
  assert got['dcg_tempered']['validation_nll'] <= got['dcg']['validation_nll']
  # The DCG's 1 - max probability ranking its own errors; tempering keeps that order.
  dcg_t = test[1]
  own = calibration.selective_curve(1 - dcg_t.max(-1), dcg_t.argmax(-1) == test[2])['aurc']
  assert got['dcg']['aurc_dcg_ranking'] == got['dcg_tempered']['aurc_dcg_ranking'] == own
  right = got['mean_softmax_tempered']
  assert right['aurc_dcg_ranking'] != right['aurc']


def test_over_seeds_and_table():
  rng = np.random.default_rng(1)
  per_seed = [ro.compare(_split(rng, 200, 4), _split(rng, 200, 4)) for _ in range(2)]
  summary = ro.over_seeds(per_seed)
  assert summary['votes_smoothed']['nll']['values'] == [s['votes_smoothed']['nll'] for s in per_seed]
  lines = ro.table(summary).splitlines()
  assert len(lines) == 2 + len(ro.READOUTS) + 2
  assert lines[2].startswith('| mean_softmax_tempered |') and lines[2].endswith('| 0.0 |')
  assert lines[0].count('|') == lines[2].count('|') == 10
