"""The training loop between the steps, against the official trainer's: validation cadence, the
EMA at evaluation, steps per epoch and the partial last batch."""

from configs import aptos, default, isic
from diffmic_jax import evaluate, train


def test_validation_after_the_official_epochs():
  # Officially `epoch % validation_freq == 0 or epoch + 1 == n_epochs` on 0-based epochs: after
  # joint epochs 1, 11, 21 and the last; here also after the DCG pre-training.
  pre, spe, every = 30, 3, 10
  total = pre + 25 * spe
  steps = [s for s in range(1, total + 1) if train.validates(s, pre, total, spe, every)]
  assert steps == [pre, pre + spe, pre + 11 * spe, pre + 21 * spe, total]


def test_official_recipes_evaluate_the_raw_params():
  # The official code keeps an EMA and never evaluates it.
  for config in (default.get_config(), aptos.get_config(), isic.get_config()):
    assert not evaluate.uses_ema(config)
