"""grain pipelines over the built TFDS sources: the endless training stream and padded eval.

Training: this process's shard of the split (example i goes to process i % P), a seeded
shuffle that changes every epoch (or class-balanced draws), decode + augmentation per element in
`read_threads` threads (or `num_workers` processes). With `partial_last_batch`, as the official
DataLoader (`drop_last=False`), every epoch is ceil(n / B) batches, the last one smaller, and
batches are made per epoch before the threads read them; otherwise the endless stream is cut into
whole batches after `to_iter_dataset`, so thread prefetch buffers single images. The iterator's
`get_state()`/`set_state()` and grain's Orbax handler resume at the same next batch.

Evaluation: fixed order, no augmentation, the last batch padded with `mask` False, the same
number of batches on every process, every example exactly once across processes.
"""

import grain
import numpy as np

from diffmic_jax.data.augment import BalancedPick, DecodeAugment, EvalSource, Lookup
from diffmic_jax.data.dataset import data_source, labels_of


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(f'global batch {global_batch_size} is not divisible by the '
                     f'{process_count} processes')
  return global_batch_size // process_count


class EpochBatches(grain.MapDataset):
  """Batches of an epoch-ordered endless element stream that never straddle two epochs.

  Epoch e is elements [e n, (e + 1) n): ceil(n / b) batches, the last n - (ceil(n / b) - 1) b
  elements. Random access by batch number, so resuming and worker slicing stay exact.
  """

  def __init__(self, parent: grain.MapDataset, batch_size: int, epoch_size: int):
    super().__init__(parent)
    self._b, self._n = batch_size, epoch_size
    self._per_epoch = -(-epoch_size // batch_size)

  def __len__(self) -> int:
    return len(self._parent) // self._n * self._per_epoch

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, j = divmod(index, self._per_epoch)
    start = epoch * self._n + j * self._b
    items = [self._parent[i] for i in range(start, min(start + self._b, (epoch + 1) * self._n))]
    return {k: np.stack([item[k] for item in items]) for k in items[0]}


def make_train_iterator(data_cfg, *, image_size: int, global_batch_size: int, seed: int,
                        process_index: int = 0, process_count: int = 1,
                        partial_last_batch: bool = False):
  """Endless, seeded, augmented training batches for this process.

  Args:
    data_cfg: `config.data` (name, splits, augmentation switches, class_balanced, workers).
    image_size: Side of the square output images.
    global_batch_size: Batch over all processes; this process yields a 1/P share.
    seed: Fixes the shuffle (different every epoch) and every augmentation.
    process_index: This process, in [0, process_count).
    process_count: Number of processes reading disjoint shards.
    partial_last_batch: ceil(n / B) batches per epoch, the last one smaller (one process only:
      the processes' shards would differ in size); else an endless stream of whole batches.

  Returns:
    A grain `DatasetIterator` of `{'image': uint8 [b, s, s, 3], 'label': int32 [b]}`.
  """
  b = _local_batch(global_batch_size, process_count)
  if partial_last_batch and process_count > 1:
    raise ValueError(f'a partial last batch needs one process, got {process_count}')
  source = data_source(data_cfg, data_cfg.train_split)
  n = len(source)
  shard = np.arange(process_index, n, process_count)
  if len(shard) == 0:
    raise ValueError(f'process {process_index} of {process_count} has no training examples')
  indices = grain.MapDataset.source(shard)
  if data_cfg.class_balanced:
    labels = labels_of(data_cfg, data_cfg.train_split)[shard]
    by_class = tuple(shard[labels == k] for k in np.unique(labels))
    indices = indices.repeat().random_map(BalancedPick(by_class), seed=seed)
  else:
    indices = indices.shuffle(seed=seed).repeat()
  augment = DecodeAugment(image_size=image_size, horizontal_flip=data_cfg.horizontal_flip,
                          vertical_flip=data_cfg.vertical_flip,
                          rotation_degrees=float(data_cfg.rotation_degrees))
  ds = indices.map(Lookup(source)).random_map(augment, seed=seed + 1)
  threads = max(1, data_cfg.read_threads)
  if partial_last_batch:
    read = grain.ReadOptions(num_threads=threads,
                             prefetch_buffer_size=max(threads, data_cfg.prefetch_batches))
    ds = EpochBatches(ds, b, n).to_iter_dataset(read)
  else:
    read = grain.ReadOptions(num_threads=threads,
                             prefetch_buffer_size=max(1, data_cfg.prefetch_batches) * b)
    ds = ds.to_iter_dataset(read).batch(b, drop_remainder=True)
  if data_cfg.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_cfg.num_workers, per_worker_buffer_size=max(1, data_cfg.prefetch_batches)))
  return iter(ds)


def make_eval_iterator(data_cfg, split: str, *, image_size: int, global_batch_size: int,
                       process_index: int = 0, process_count: int = 1):
  """Padded, masked evaluation batches for this process (iterate it once per evaluation).

  Args:
    data_cfg: `config.data`.
    split: Split name (TFDS syntax, e.g. 'validation' or 'test').
    image_size: Side of the square output images.
    global_batch_size: Batch over all processes; this process yields a 1/P share.
    process_index: This process, in [0, process_count).
    process_count: Number of processes.

  Returns:
    A grain `IterDataset` of `{'image': uint8 [b, s, s, 3], 'label': int32 [b], 'mask': bool [b],
    'index': int32 [b]}` (index -1 on padding); every `iter()` starts from the first batch.
  """
  b = _local_batch(global_batch_size, process_count)
  source = EvalSource(data_source(data_cfg, split), image_size, b, process_index, process_count)
  read = grain.ReadOptions(num_threads=max(1, data_cfg.read_threads),
                           prefetch_buffer_size=max(1, data_cfg.prefetch_batches) * b)
  return grain.MapDataset.source(source).to_iter_dataset(read).batch(b)
