"""APTOS 2019 diabetic-retinopathy grading (5 grades), DiffMIC's official recipe.

Recipe:

    python -m diffmic_jax.main --config=configs/aptos.py --workdir=gs://BUCKET/diffmic/aptos \
      --config.data.manual_dir=/path/to/aptos2019 \
      --config.model.pretrained=resnet50_imagenet.msgpack

`manual_dir` holds the Kaggle download (`train.csv` + `train_images/`) or a folder of
`<id_code>.{png,jpg}` with `labels.csv`. Split `diffmic`: DiffMIC's published 70/30 train/test
lists, with the published 352-image validation list carved out of train (checkpoints are chosen
on it, never on test); `grouped`: the duplicate-aware 70/15/15 split.

Hardware: one accelerator (TPU v4/v5e chip or a recent GPU); the joint step is ~70 GFLOP per image.
Wall time: about 1.4 h on one H200 for 15 + 1000 epochs of 2,212 images (measured: 0.074 s per
joint step at batch 32, random weights, bench/results/h200/; evaluation not included).
Expected: the paper reports accuracy 0.858 / macro-F1 0.716 with
test-set checkpoint selection and the truncated 60-step chain; a public re-run of the official code
got 0.812 / 0.653 (scott-yjyang/DiffMIC#6).

`configs/aptos.py:smoke` runs the same data through tiny models for a few steps (about a minute on
a CPU): a check of the data and the set-up, not a result.
"""

from configs import default


def get_config(arg: str = ''):
  arg = default.check_arg('configs/aptos.py', arg)
  c = default.get_config()
  c.num_classes = 5
  c.image_size = 224
  c.data.name = 'aptos2019'
  c.data.builder_config = 'diffmic'
  c.data.vertical_flip = True  # Fundus photos have no up/down.
  c.train.batch_size = 32
  c.train.dcg_pretrain_epochs = 15
  c.train.epochs = 1000
  c.eval.sampler = 'matched'  # Last 60 of the T = 1000 steps; 'truncated' is the published protocol.
  c.eval.num_steps = 60
  c.eval.batch_size = 32
  return default.smoke(c) if arg == 'smoke' else c
