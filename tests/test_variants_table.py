"""bench/variants_table.py reads each row's three result files and puts the DCG's calibration
beside the diffusion's."""

import json

from conftest import load_bench_script

vt = load_bench_script('variants_table')


def _stat(m):
  return {'mean': m, 'std': 0.01, 'values': [m - 0.01, m + 0.01]}


def test_row_and_table_read_the_three_results(tmp_path, monkeypatch):
  monkeypatch.setattr(vt, 'RESULTS', tmp_path)
  (tmp_path / 'accuracy_a.json').write_text(json.dumps({'summary': {
      'dcg': {'accuracy': _stat(0.75)}, 'diffusion': {'accuracy': _stat(0.74)}}}))
  (tmp_path / 'diffusion_vs_dcg_a_val.json').write_text(json.dumps({
      'config': {'eval': {'num_samples': 16}}, 'summary': {
          'dcg_accuracy': _stat(0.73), 'diffusion_accuracy': _stat(0.72),
          'shuffled_encoder_accuracy': _stat(0.70), 'agreement': _stat(0.96)}}))
  prob = lambda ece, nll: {'ece': _stat(ece), 'nll': _stat(nll)}
  (tmp_path / 'samples_a.json').write_text(json.dumps({'by_samples': {'64': {
      'probabilities': {'temperature': prob(0.05, 0.75), 'dcg': prob(0.03, 0.70)},
      'uncertainty': {'entropy_calibrated': {'aurc': _stat(0.085)},
                      'dcg_one_minus_max': {'aurc': _stat(0.081)}}}}}))
  r = vt.row('a', 'a_val', 64)
  assert r['validation']['shuffled_encoder_accuracy']['mean'] == 0.70
  assert r['test']['diffusion_accuracy']['mean'] == 0.74
  line = vt.table({'a': ('prior dropout', r)}, 64).splitlines()[2]
  assert line.startswith('| prior dropout | 0.730 ± 0.010 | 0.720 ± 0.010 | 0.700 ± 0.010 |')
  assert line.endswith('| 0.050 ± 0.010 (0.030) | 0.750 ± 0.010 (0.700) | 0.085 ± 0.010 (0.081) |')
