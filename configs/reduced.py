"""APTOS 2019 or HAM10000 at 64 px with small ResNet18 trunks: DiffMIC against its DCG on a budget.

The recipe for the question "does the diffusion beat its own DCG?" on the real datasets when
224 px and 1,000 epochs are out of reach. Not the paper's setting and not its accuracy.

    python -m diffmic_jax.main --config=configs/reduced.py:aptos --workdir=/tmp/aptos64 \
      --config.data.manual_dir=/path/to/aptos2019 [--config.data.builder_config=grouped]
    python -m diffmic_jax.main --config=configs/reduced.py:isic --workdir=/tmp/ham64 \
      --config.data.manual_dir=/path/to/HAM10000

Over seeds, checkpoint chosen on validation, test once:

    python bench/accuracy.py --config=configs/reduced.py:aptos --seeds=0,1,2 --parallel=3 \
      --workdir=/tmp/acc_aptos64 --config.data.manual_dir=/path/to/aptos2019

What is reduced: images stored and trained at 64 px (the standard stem, so the saliency grid is
2 x 2 and the local stream sees 4 tiles of 32 px, the tile size of the official 224 px run);
ResNet18 trunks at half width for both DCG streams and the epsilon-network encoder; a 1024-wide
epsilon network; 10 + 40 epochs. Split, sampler and the rest of the recipe are the dataset's own
(`configs/aptos.py`, `configs/isic.py`).

Hardware and wall time: one GPU, a few minutes per run; on a 2-core CPU about 0.3 s per joint step.

Measured (APTOS, test split, checkpoint chosen on validation, seeds 0-2, one H200) with
`--config.train.epochs=30 --config.eval.sampler=truncated --config.eval.val_sampler=ddim
--config.eval.val_num_steps=10`: DCG accuracy 0.733 ± 0.009 / macro-F1 0.475 ± 0.015, DiffMIC
0.639 ± 0.005 / 0.403 ± 0.017 (docs/experiments.md). These defaults have not been run at 64 px.
"""

from configs import aptos, default, isic

DATASETS = {'aptos': aptos, 'isic': isic}


def get_config(arg: str = 'aptos'):
  arg = default.check_arg('configs/reduced.py', arg, tuple(DATASETS))
  c = DATASETS[arg].get_config()
  c.image_size = 64
  c.data.stored_size = 64
  c.data.data_dir = '~/tensorflow_datasets'

  c.model.dcg_backbone = 'resnet18'
  c.model.eps_backbone = 'resnet18'
  c.model.width = 32
  c.model.feature_dim = 1024

  c.train.batch_size = 64
  c.train.dcg_pretrain_epochs = 10
  c.train.epochs = 40
  c.train.warmup_epochs = 4
  c.train.eval_every_epochs = 4
  c.train.ema_decay = 0.999
  c.train.eval_with_ema = True  # Not official; this recipe's results were measured with it.
  c.train.log_every_steps = 20

  c.eval.batch_size = 128
  c.eval.num_samples = 4
  return c
