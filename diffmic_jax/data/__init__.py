"""Data for DiffMIC-JAX: TFDS array_record builders, read back by a grain pipeline.

    prepare(config.data, config.num_classes)  # build once per source (rebuilt if it changed)
    k = check_num_classes(config.data, config.num_classes)  # K of the build; a mismatch raises
    it = make_train_iterator(config.data, image_size=224, global_batch_size=32, seed=0)
    batch = next(it)                          # {'image': uint8 [b,H,W,3], 'label': int32 [b]}
    images = normalize(batch['image'])        # on device: ImageNet mean/std, float32

`python -m diffmic_jax.data.cli build <name> --config=<scheme>_<size> --manual_dir=DIR
--data_dir=DIR` (TFDS's `tfds build`, runnable without TensorFlow) writes what `prepare` writes:
`<data_dir>/<source id>/<name>/<config>/1.0.0`, one source id per manual directory, with the
source record (`source.py`) that tells `prepare` whether the build is still current.
Evaluation batches are padded and carry `mask`/`index`, so every example counts exactly once.
"""

from diffmic_jax.data.builds import check_num_classes
from diffmic_jax.data.builds import prepare
from diffmic_jax.data.builds import resolve_splits
from diffmic_jax.data.dataset import class_counts
from diffmic_jax.data.dataset import num_examples
from diffmic_jax.data.examples import DataError
from diffmic_jax.data.normalize import IMAGENET_MEAN
from diffmic_jax.data.normalize import IMAGENET_STD
from diffmic_jax.data.normalize import normalize
from diffmic_jax.data.pipeline import make_eval_iterator
from diffmic_jax.data.pipeline import make_train_iterator
