"""Where the diffusion's prediction comes from: its DCG's prior, or its own view of the image.

For each seed's chosen checkpoint, on one split (validation by default, so that nothing here is
read off the test split), this compares the diffusion's prediction (argmax of the mean sampled
probability) with its DCG's:
- how often the two agree, and on the images where they do not, which one is right;
- how confident the DCG was on those images (its largest probability);
- the same sampler again, with the same noise, but with the epsilon network's encoder shown
  another image of the batch (a derangement of the batch's real rows) while the DCG and its
  priors see the right one. If the diffusion's accuracy does not move, its prediction comes from
  the prior alone; the drop is what its own view of the image contributes.

    python bench/diffusion_vs_dcg.py --config=configs/reduced.py:aptos --workdir=/tmp/aptos32d_60 \\
        --seeds=0,1,2 --config.eval.num_samples=16 [--split=validation] [--config.field=value ...]

The workdir is bench/accuracy.py's: one run per seed under <workdir>/seed<N>; pass the same
config overrides that trained them. Prints a table and writes
bench/results/diffusion_vs_dcg_<name>.json.
"""

import json
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffmic_jax import data, evaluate, metrics, parallel, train_state  # noqa: E402
from diffmic_jax.data.normalize import normalize  # noqa: E402
from diffmic_jax.models import EpsilonNet, priors as dcg_priors  # noqa: E402


def make_predict_fn(models, spec: evaluate.SamplerSpec):
  """evaluate.make_predict_fn with one more argument: jit(fn(dcg_vars, eps_vars, images, key,
  encoder_images=None)).

  `encoder_images`, when given, is what the epsilon network's encoder sees instead of `images`
  (the DCG and its priors still see `images`): how much of the diffusion's prediction comes from
  its own view of the image rather than from the DCG's prior.
  """
  def predict(dcg_vars, eps_vars, images, key, encoder_images=None):
    x = normalize(images)
    priors = dcg_priors(models.dcg.apply(dcg_vars, x, train=False))
    x_enc = x if encoder_images is None else normalize(encoder_images)
    feats = models.eps.apply(eps_vars, x_enc, False, method=EpsilonNet.encode)
    probs = evaluate.sample_from_features(models, spec, eps_vars, feats, priors, key)
    return {'dcg_prob': priors[0], 'sample_probs': probs}

  return jax.jit(predict)


def deranged_rows(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Row indices that send every real (masked-in) row to another real row; padding stays put."""
  rows = np.arange(len(mask))
  real = rng.permutation(np.flatnonzero(mask))
  if len(real) > 1:
    rows[real] = np.roll(real, 1)  # A cycle through a random order: no row keeps its own image.
  return rows


def compare(labels, dcg_prob, diff_prob, shuffled_prob, num_classes: int) -> dict:
  """The agreement and ablation figures for one seed (all arrays over the same N images)."""
  dcg, diff, shuf = dcg_prob.argmax(1), diff_prob.argmax(1), shuffled_prob.argmax(1)
  apart = dcg != diff
  acc = lambda p: float(np.mean(p == labels))
  macro_f1 = lambda prob: metrics.classification_metrics(labels, prob, num_classes)['macro_f1']
  return {
      'n': int(len(labels)),
      'dcg_accuracy': acc(dcg),
      'diffusion_accuracy': acc(diff),
      'shuffled_encoder_accuracy': acc(shuf),
      'dcg_macro_f1': macro_f1(dcg_prob),
      'diffusion_macro_f1': macro_f1(diff_prob),
      'shuffled_encoder_macro_f1': macro_f1(shuffled_prob),
      'agreement': float(np.mean(~apart)),
      'shuffled_encoder_agreement_with_dcg': float(np.mean(shuf == dcg)),
      'disagreements': int(apart.sum()),
      'disagreements_dcg_right': int(np.sum(apart & (dcg == labels))),
      'disagreements_diffusion_right': int(np.sum(apart & (diff == labels))),
      'dcg_max_prob_where_agree': float(dcg_prob.max(1)[~apart].mean()),
      'dcg_max_prob_where_apart': float(dcg_prob.max(1)[apart].mean()) if apart.any() else None,
  }


def run_seed(config, workdir: str, split: str, which: str) -> dict:
  restored = evaluate.restore(config, workdir, which)
  models, mesh, state, chosen = restored.models, restored.mesh, restored.state, restored.description
  e = config.eval
  spec = evaluate.SamplerSpec(e.sampler, e.num_steps, e.num_samples)
  predict = make_predict_fn(models, spec)
  dcg_vars = state.dcg.variables()
  eps_vars = state.eps.variables(state.eval_eps_params(evaluate.uses_ema(config)))
  batches = data.make_eval_iterator(config.data, split, image_size=config.image_size,
                                    global_batch_size=e.batch_size)
  key, rng = train_state.keys(config.seed)['eval'], np.random.default_rng(config.seed)
  keep = {'label': [], 'dcg': [], 'diff': [], 'shuf': []}
  for i, local in enumerate(batches):
    m = local['mask'].astype(bool)
    rows = deranged_rows(m, rng)
    batch = parallel.global_batch({'image': local['image'], 'other': local['image'][rows]}, mesh)
    k = jax.random.fold_in(key, i)  # The same noise for both: only the encoder's input differs.
    out = predict(dcg_vars, eps_vars, batch['image'], k)
    shuf = predict(dcg_vars, eps_vars, batch['image'], k, batch['other'])
    keep['label'].append(local['label'][m])
    keep['dcg'].append(np.asarray(out['dcg_prob'])[m])
    keep['diff'].append(np.asarray(out['sample_probs']).mean(0)[m])
    keep['shuf'].append(np.asarray(shuf['sample_probs']).mean(0)[m])
  cat = {k: np.concatenate(v) for k, v in keep.items()}
  res = compare(cat['label'], cat['dcg'], cat['diff'], cat['shuf'], models.num_classes)
  return {**res, 'checkpoint': chosen, 'sampler': spec.describe(models.schedule.num_timesteps)}


def main(argv):
  del argv
  if jax.process_count() > 1:
    raise SystemExit('bench/diffusion_vs_dcg.py runs in one process')
  f = flags.FLAGS
  per_seed, missing = {}, {}
  for seed in (int(s) for s in f.seeds.split(',')):
    config = f.config.unlock()
    config.seed = seed
    try:
      per_seed[seed] = run_seed(config, str(pathlib.Path(f.workdir) / f'seed{seed}'), f.split,
                                f.checkpoint)
    except FileNotFoundError as e:  # A seed whose run never saved: said, and left out.
      print(f'seed {seed} left out: {e}', flush=True)
      missing[seed] = str(e)
  if not per_seed:
    raise SystemExit(f'no seed under {f.workdir} has a checkpoint: {missing}')
  fields = [k for k, v in next(iter(per_seed.values())).items()
            if isinstance(v, (int, float)) and k != 'n']
  summary = {}
  for k in fields:
    vals = [r[k] for r in per_seed.values() if r[k] is not None]
    summary[k] = {'mean': statistics.mean(vals),
                  'std': statistics.stdev(vals) if len(vals) > 1 else 0.0, 'values': vals}
  first = next(iter(per_seed.values()))
  print(f"{config_flags.get_config_filename(f['config'])} {f.workdir}; split {f.split} "
        f"(n = {first['n']}); seeds {list(per_seed)}; {first['sampler']}"
        + (f'; LEFT OUT (no checkpoint): {list(missing)}' if missing else ''))
  for k in fields:
    s = summary[k]
    print(f"{k:40s} {s['mean']:8.3f} ± {s['std']:.3f}   " + ' '.join(f'{v:.3f}' for v in s['values']))
  name = f.name or pathlib.Path(f.workdir).name
  out = pathlib.Path(f.out or REPO / 'bench' / 'results' / f'diffusion_vs_dcg_{name}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({'workdir': f.workdir, 'split': f.split, 'seeds': list(per_seed),
                             'seeds_without_checkpoint': missing,
                             'config': f.config.to_dict(), 'summary': summary,
                             'per_seed': {str(s): r for s, r in per_seed.items()}}, indent=2,
                            default=str))
  print(f'wrote {out}')


def _define_flags():
  """Only when run as a script: tests import the helpers beside modules with flags of their own."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'bench/accuracy.py workdir: runs under <workdir>/seed<N>.')
  flags.DEFINE_string('seeds', '0,1,2', 'Comma-separated seeds.')
  flags.DEFINE_string('split', 'validation', 'The split to compare on.')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_string('name', None, "Result name (default: the workdir's last part).")
  flags.DEFINE_string('out', None, 'JSON path (default bench/results/diffusion_vs_dcg_<name>.json).')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  _define_flags()
  app.run(main)
