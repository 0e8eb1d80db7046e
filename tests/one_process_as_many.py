"""`diffmic_jax.main` in ONE process that reads the training data as P processes would.

Each process of a multi-process run reads its own shard of the train split (example i goes to
process i % P, shuffled per shard), so one plain process with the same global batch sees other
examples. This driver is the reference tests/test_multiprocess.py compares against: it builds the
P shard iterators and concatenates their batches in process order, which is the row order
`jax.make_array_from_process_local_data` gives the global batch when each process owns a
contiguous block of the ('data',) mesh. The iterator state (all P positions) goes into the
checkpoint like a real one, so resume works too.

    python tests/one_process_as_many.py --processes=2 --config=... --workdir=...
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `configs` as with -m.

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from diffmic_jax import data, main  # noqa: E402

flags.DEFINE_integer('processes', 2, 'How many processes to read the training data as.')


class ShardUnion:
  """Batches of P shard iterators, concatenated; get_state/set_state as grain's handler expects."""

  def __init__(self, iterators):
    self._its = list(iterators)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(it) for it in self._its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self._its]).encode()

  def set_state(self, state: bytes) -> None:
    for it, s in zip(self._its, json.loads(state)):
      it.set_state(s)

  def start_prefetch(self) -> None:
    for it in self._its:
      getattr(it, 'start_prefetch', lambda: None)()


def _run(argv):
  real = data.make_train_iterator
  count = flags.FLAGS.processes

  def as_many(data_cfg, *, process_index=0, process_count=1, **kwargs):
    assert (process_index, process_count) == (0, 1), 'the reference runs as one process'
    return ShardUnion(real(data_cfg, process_index=p, process_count=count, **kwargs)
                      for p in range(count))

  data.make_train_iterator = as_many  # train.py looks it up on the package at call time.
  main.main(argv)


if __name__ == '__main__':
  sys.exit(app.run(_run))
