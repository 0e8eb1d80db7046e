"""Placental maturity grading from B-mode ultrasound (4 grades), DiffMIC's recipe (v2 config).

The PMG data is private. Any labelled image set works the same way through the generic builder:
a folder of images with `labels.csv` holding `file,label[,split][,group]` (without `split`, a
70/15/15 split grouped by `group`, e.g. the patient, is drawn).

    python -m diffmic_jax.main --config=configs/placenta.py --workdir=/tmp/placenta \
      --config.data.manual_dir=/path/to/pmg --config.model.pretrained=resnet50_imagenet.msgpack

Hardware: one accelerator; batch 64. Wall time: about 1-2 h on one H100-class device for
10 + 2000 epochs of ~1,700 images (estimate from FLOPs). Expected: the
paper reports accuracy 0.931 / macro-F1 0.926 on PMG2020 (test-set selection, 100-step chain).

`configs/placenta.py:smoke` runs the same data through tiny models for a few steps: a check of the
data and the set-up, not a result.
"""

from configs import default


def get_config(arg: str = ''):
  arg = default.check_arg('configs/placenta.py', arg)
  c = default.get_config()
  c.num_classes = 4
  c.image_size = 224
  c.data.name = 'image_folder'
  c.data.builder_config = 'default'
  c.data.vertical_flip = False  # Official: horizontal flip and rotation only.
  c.train.batch_size = 64
  c.train.dcg_pretrain_epochs = 10
  c.train.epochs = 2000
  c.eval.sampler = 'matched'  # 'truncated' is the published protocol.
  c.eval.num_steps = 100
  c.eval.batch_size = 64
  return default.smoke(c) if arg == 'smoke' else c
