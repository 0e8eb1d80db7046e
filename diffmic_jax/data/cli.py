"""`tfds build` without TensorFlow: TFDS's own build command, with our builders registered.

    python -m diffmic_jax.data.cli build aptos2019 --config=diffmic_224 \
        --manual_dir=/path/to/aptos2019 --data_dir=~/tensorflow_datasets

The `tfds` script cannot start without TensorFlow: importing its `convert_format` command
evaluates `tf.train.Example` (tensorflow_datasets 4.9.10, scripts/cli/convert_format_utils.py),
although building never uses it. This runs the same `build` command (same flags, same code:
`tensorflow_datasets.scripts.cli.build`) without that import. Where TensorFlow is installed,
`tfds build aptos2019 --imports=diffmic_jax.data.builders.tfds_builders ...` is the same build.
Either way the result is what `diffmic_jax.data.prepare(config.data)` writes and training reads.
"""

import dataclasses

from absl import app
import simple_parsing
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils

from diffmic_jax.data.builders import tfds_builders  # noqa: F401  Registers the builders.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(cli_utils.Args):
  """TFDS command line, build command only (runs without TensorFlow)."""

  command: build.Args = simple_parsing.subparsers({'build': build.Args})

  def execute(self) -> None:
    self.command.execute()


def main(args: Args) -> None:
  # As `tfds`: the built-in datasets stay visible, so a typo'd name gets TFDS's own message.
  tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                       tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
  args.execute()


if __name__ == '__main__':
  app.run(main, flags_parser=cli_utils.make_flags_parser(Args, description=__doc__))
