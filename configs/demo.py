"""Demo: DiffMIC on the embedded RetinaMNIST set (real fundus photos, DR grades 0-4), on a CPU.

Recipe (no download; the images ship inside the package):

    python -m diffmic_jax.main --config=configs/demo.py --workdir=/tmp/diffmic_demo

Hardware: any CPU (2 cores). Wall time: about 4 minutes. 28 px images, ResNet18-shaped trunks at
half width with the small-image stem, both training stages, validation-selected checkpoint, test
report. It shows the whole pipeline working, not the paper's accuracy.

Expected (test split, n = 400, seed 1234, JAX 0.10.2 on a CPU): DCG accuracy 0.528 / macro-F1
0.331, DiffMIC 0.465 / 0.287. Other JAX versions or hardware can move these by a few points.

`configs/demo.py:smoke` shrinks it to seconds (tiny trunks, T = 50, a few steps): what the tests
run. `cpu_tuning` is on: the demo is meant for a CPU.
"""

from configs import default


def get_config(arg: str = ''):
  arg = default.check_arg('configs/demo.py', arg)
  c = default.get_config()
  c.cpu_tuning = True  # Meant for a CPU; ignored elsewhere.
  c.num_classes = 5
  c.image_size = 28
  c.data.name = 'demo'
  c.data.builder_config = 'retinamnist'
  c.data.data_dir = '/tmp/diffmic_jax_tfds'
  c.data.vertical_flip = True  # Fundus photos, as APTOS.
  c.data.read_threads = 2

  c.model.dcg_backbone = 'resnet18'
  c.model.eps_backbone = 'resnet18'
  c.model.small_stem = True
  c.model.width = 32
  c.model.num_rois = 6
  c.model.feature_dim = 512

  c.train.batch_size = 64
  c.train.dcg_pretrain_epochs = 2
  c.train.epochs = 4
  c.train.warmup_epochs = 1
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 50
  c.train.eval_every_epochs = 2
  c.train.ema_decay = 0.999
  c.train.eval_with_ema = True  # Not official; this recipe's results were measured with it.

  c.eval.batch_size = 200
  c.eval.sampler = 'matched'
  c.eval.num_steps = 100
  c.eval.num_samples = 4
  c.eval.splits = ('test',)

  return default.smoke(c) if arg == 'smoke' else c
