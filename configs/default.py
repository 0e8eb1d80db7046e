"""Base config: every field DiffMIC-JAX reads, with what it means.

Dataset configs (`aptos.py`, `isic.py`, `placenta.py`, `demo.py`) import this one and override only
what differs, each with its run recipe in its docstring. Run with

    python -m diffmic_jax.main --config=configs/aptos.py --workdir=/tmp/aptos

and override any field on the command line (`--config.train.batch_size=64`). The config is locked:
a misspelt field stops the run naming the field, and `diffmic_jax/config_check.py` checks every
value before any work starts. Every dataset config takes the argument `smoke`
(`--config=configs/aptos.py:smoke`): the same pipeline shrunk to a minute on a CPU (`smoke` below).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 1234  # One root key; every other key is fold_in(root, purpose, step).
  # K: length of the label vector the diffusion denoises, checked against the dataset before any
  # work. None: the dataset's (image_folder: the largest label + 1).
  c.num_classes = ml_collections.FieldReference(5, field_type=int)
  c.image_size = 224  # Side of the square model input (after the stored-size crop/resize).
  # CPU-only runs: glibc malloc settings (main re-executes itself once), XLA:CPU's memory-optimised
  # scheduler and conv.py's matmul forms of the convolutions. Ignored on GPU and TPU.
  c.cpu_tuning = False

  # ---- data (owned by diffmic_jax/data) ----
  c.data = ml_collections.ConfigDict()
  c.data.name = 'aptos2019'  # aptos2019 | isic2018 | image_folder | medmnist | demo.
  c.data.builder_config = 'diffmic'  # diffmic | grouped | official (isic2018); medmnist: file name.
  c.data.data_dir = '~/tensorflow_datasets'  # Where built array_record files live (gs:// ok).
  # Source images + CSV for building; builds are kept per manual_dir. None: the one build in
  # data_dir, else <data_dir>/downloads/manual/<name>.
  c.data.manual_dir = ml_collections.config_dict.placeholder(str)
  c.data.train_split = 'train'
  c.data.val_split = 'validation'  # Checkpoint selection split. Never the test split.
  c.data.horizontal_flip = True  # Official recipe: all datasets.
  c.data.vertical_flip = True  # Official recipe: fundus (APTOS) only.
  c.data.rotation_degrees = 30.0  # Uniform in [-d, d], bilinear, zero fill; 0 disables.
  c.data.class_balanced = False  # Sample classes uniformly (the official code does not).
  c.data.num_workers = 0  # grain worker processes; 0 reads in threads of the main process.
  c.data.read_threads = 4  # Threads decoding images per process (PIL releases the GIL).
  c.data.prefetch_batches = 2  # Batches buffered ahead of the train step.
  c.data.stored_size = 224  # Side of the images stored at build time (crop + resize once).
  # How a photo is stored: 'png' + 'bilinear' gives the official loader's pixels exactly;
  # 'jpeg' (quality 95) + 'bicubic' is about 4x smaller at 224 px. Each pair is its own build.
  c.data.encoding = 'png'
  c.data.resize = 'bilinear'
  c.data.skip_bad_examples = False  # Build: skip bad images/rows (listed in skipped.txt).

  # ---- model ----
  c.model = ml_collections.ConfigDict()
  c.model.dcg_backbone = 'resnet50'  # Official DCG: two ImageNet ResNet50s (global, local).
  c.model.eps_backbone = 'resnet18'  # Official epsilon-network encoder: ResNet18, random init.
  c.model.small_stem = False  # 3x3 stride-1 stem, no max-pool: for 28-64 px inputs.
  c.model.width = 64  # ResNet base width (torchvision: 64). Smaller only for smoke tests.
  c.model.num_rois = 6  # k: image tiles the local stream looks at.
  c.model.top_t_percent = 1.0  # y_g aggregates the top t fraction of saliency cells (1.0 = mean).
  c.model.attention_dim = 128  # Gated-attention hidden width (U, V: C -> 128).
  c.model.crop_first_channel = False  # Official quirk: crop channel 0 only and repeat it x3.
  c.model.feature_dim = 6144  # Epsilon-network width (encoder projection and hidden layers).
  c.model.prior_input = 'fused'  # 'fused': [y_t, y_hat] (code); 'global_local': [y_t, y_g, y_l] (paper).
  c.model.dtype = 'float32'  # Compute dtype (bfloat16 on TPU halves activation memory).
  # Train-mode ResNet blocks recomputed in the backward pass, for memory: 'none', 'conv_outputs'
  # (keep the convolutions' outputs, recompute BatchNorm and ReLU) or 'blocks' (keep only each
  # block's input). Values and gradients are the same; see docs/benchmarks.md, Memory.
  c.model.remat = 'none'
  # Converted ImageNet weights (diffmic-convert-weights) for both DCG trunks; None: random init.
  c.model.pretrained = config_dict.placeholder(str)
  c.model.eps_pretrained = config_dict.placeholder(str)  # Its encoder's; None, as official.
  # 'dcg': the encoder starts stage 2 as a copy of the trained DCG's global trunk (same backbone,
  # width and stem), so it sees the image as a classifier does; 'random': as official.
  c.model.eps_init = 'random'

  # ---- diffusion ----
  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.timesteps = 1000  # T.
  c.diffusion.beta_schedule = 'linear'  # linear | cosine | quadratic.
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02

  # ---- loss ----
  c.loss = ml_collections.ConfigDict()
  c.loss.mmd_weight = 0.5  # lambda on MMD(global prior) + MMD(local prior).
  c.loss.mmd_bandwidths = ()  # Squared RBF bandwidths; () = the official single K**2 kernel.
  # The official `--add_ce_loss` term (lambda_ce; 0.01 is commented out in its configs): CE of the
  # labels against -(y0_tilde - 1)^2 with eps_theta detached, as officially. It adds to the reported
  # loss and updates the head's BatchNorm statistics once more; no gradient reaches any network.
  c.loss.ce_weight = 0.0
  # Not official: the same CE back-propagated through eps_theta, so the epsilon network gets a
  # direct classification signal (the official term's gradient is discarded).
  c.loss.eps_ce_weight = 0.0
  # Not official: DiffMIC-v2's prior-hardness weight on the noise MSE, 1 + alpha (1 - p_true) per
  # image, p_true the (fed) fused prior's probability of the label. 0: unweighted, as officially.
  c.loss.prior_weight = 0.0

  # ---- training ----
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # Global batch, split over all devices of all processes.
  c.train.dcg_pretrain_epochs = 15  # Stage 1: DCG alone, cross-entropy on the fused logits.
  c.train.epochs = 1000  # Stage 2: joint epsilon-network + DCG epochs.
  # None: ceil(len(train split) / batch_size), the last batch smaller, as the official loader
  # (with several processes: whole batches only). Set: that many whole batches per epoch.
  c.train.steps_per_epoch = config_dict.placeholder(int)
  c.train.dcg_lr = 2e-4  # Adam (amsgrad) for the DCG, constant, both stages.
  c.train.eps_lr = 1e-3  # Adam peak learning rate for the epsilon network.
  c.train.warmup_epochs = 40  # Linear warm-up, then half-cosine to min_lr at the last epoch.
  c.train.min_lr = 0.0
  c.train.grad_clip = 1.0  # Global-norm clip on epsilon-network gradients.
  c.train.ema_decay = 0.9999  # EMA of epsilon-network params; 0 disables.
  # Prior dropout: each training image's DCG prior (in the forward process and as the network's
  # input) is replaced with this probability by the uniform prior ('uniform') or by another
  # image's prior of the batch ('shuffle'), so the noise cannot be predicted from the prior alone.
  # 0: as official.
  c.train.prior_dropout = 0.0
  c.train.prior_dropout_to = 'uniform'
  # The official trainer's guidance-accuracy passes, which run the DCG in train mode: its running
  # statistics (not its weights) move over the validation split before stage 1 and over one
  # shuffled, augmented train epoch then the validation split after it (officially its test
  # split; here validation, so no test image reaches the model). One process only. Off: eval mode.
  c.train.official_dcg_passes = False
  # Evaluate with the EMA params. Off, as officially (its EMA is never used); the EMA is paired
  # with the running BatchNorm statistics that the raw params collected.
  c.train.eval_with_ema = False
  c.train.log_every_steps = 50
  # Saves for resume (the last max_to_keep kept) come at each stage end, on SIGTERM/SIGINT, every
  # checkpoint_every_minutes (None: never by time) and every checkpoint_every_steps (None: never).
  c.train.checkpoint_every_minutes = 10.0
  c.train.checkpoint_every_steps = ml_collections.config_dict.placeholder(int)
  c.train.max_to_keep = 2
  c.train.eval_every_epochs = 10  # Validation (checkpoint selection) cadence.
  c.train.select_metric = 'accuracy'  # Validation metric that picks the best checkpoint.

  # ---- evaluation / sampling ----
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 32
  # full (T-step) | truncated (the official test chain: last num_steps steps from unit noise) |
  # matched (the same steps from their own noise level; README: 'Test-time chain') | ddim.
  c.eval.sampler = 'matched'
  c.eval.num_steps = 60  # truncated / matched: last n steps of the T schedule; ddim: respaced steps.
  # In-training validation (checkpoint selection), 1 sample per image. None: the test chain
  # above, so that the checkpoint is chosen by the metric that is reported.
  c.eval.val_sampler = config_dict.placeholder(str)
  c.eval.val_num_steps = config_dict.placeholder(int)
  c.eval.num_samples = 1  # M draws per image: mean probability, vote, uncertainty.
  c.eval.splits = ('test',)  # Splits evaluated at the end of training / in evaluate mode.
  # The temperature of the reported probabilities is fitted on data.val_split once per checkpoint
  # (<workdir>/calibration/step_<N>.json); True fits it again.
  c.eval.refit_temperature = False
  c.eval.save_saliency = False  # predict mode: write saliency maps with ROI boxes.
  c.eval.max_saliency_images = 64  # predict mode: overlays for the first N images only.
  # predict --input: leave out images that cannot be read, listed in skipped.txt beside the CSV.
  c.eval.skip_unreadable = False
  return c


def check_arg(config_file: str, arg, allowed=('', 'smoke')) -> str:
  """The config argument (`--config=FILE:ARG`), refused with the choices unless it is one of them."""
  arg = arg or ''
  if arg not in allowed:
    shown = ', '.join(repr(a) for a in allowed)
    raise ValueError(f'{config_file} takes one of {shown} after the colon, got {arg!r}')
  return arg


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `c` in place to a seconds-long run of the same pipeline: tiny trunks, T = 50, 3 steps
  per stage, short chains. For trying a set-up and for tests, not for results."""
  c.model.dcg_backbone = 'resnet_tiny'
  c.model.eps_backbone = 'resnet_tiny'
  c.model.width = 4
  c.model.feature_dim = 16
  c.diffusion.timesteps = 50
  c.train.batch_size = 16
  c.train.dcg_pretrain_epochs = 1
  c.train.epochs = 1
  c.train.steps_per_epoch = 3
  c.train.warmup_epochs = 1
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_epochs = 1
  c.eval.batch_size = 64
  c.eval.num_steps = 10
  c.eval.val_num_steps = 5
  c.eval.num_samples = 2
  return c
