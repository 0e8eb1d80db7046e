"""`tfds build` without TensorFlow: TFDS's own build command, with our builders registered.

    python -m diffmic_jax.data.cli build aptos2019 --config=diffmic_224_png_bilinear \
        --manual_dir=/path/to/aptos2019 --data_dir=~/tensorflow_datasets

The `tfds` script cannot start without TensorFlow: importing its `convert_format` command
evaluates `tf.train.Example` (tensorflow_datasets 4.9.10, scripts/cli/convert_format_utils.py),
although building never uses it. This runs the same `build` command (same flags, same code:
`tensorflow_datasets.scripts.cli.build`) without that import. Where TensorFlow is installed,
`tfds build aptos2019 --imports=diffmic_jax.data.builders.tfds_builders ...` is the same build.
Either way the result is what `diffmic_jax.data.prepare(config.data)` writes and training reads.

Builds are kept per source: each dataset is built under `<data_dir>/<source id>/` (see
`diffmic_jax/data/source.py`), the folder `prepare` uses for the same `manual_dir`. Without
`--manual_dir` the source is `<data_dir>/downloads/manual/<name>`, as for `prepare`.
"""

import dataclasses
import os

from absl import app
from etils import epath
import simple_parsing
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils

from diffmic_jax.data import source
from diffmic_jax.data.builders import tfds_builders  # Registers the builders.


def per_source(args: build.Args) -> list[build.Args]:
  """One build command per dataset, each writing under its source's folder of `--data_dir`."""
  out = []
  for dataset in args.positional_datasets + args.datasets:
    name = dataset.split(':')[0].split('/')[0]
    if name not in tfds_builders.BUILDERS:
      out.append(dataclasses.replace(args, positional_datasets=[dataset], datasets=[]))
      continue
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(args.paths.data_dir)))
    if name == 'demo':
      sid, manual = source.DEMO_ID, tfds_builders.Demo.DEMO_DIR
    else:
      manual = (os.path.join(os.fspath(args.paths.manual_dir), *(
          [name] if args.paths.add_name_to_manual_dir else []))
                if args.paths.manual_dir else os.path.join(data_dir, 'downloads', 'manual', name))
      manual = os.path.abspath(os.path.expanduser(manual))
      sid = source.source_id(manual)
    paths = dataclasses.replace(args.paths, data_dir=epath.Path(data_dir, sid),
                                manual_dir=epath.Path(manual), add_name_to_manual_dir=False)
    out.append(dataclasses.replace(args, positional_datasets=[dataset], datasets=[], paths=paths))
  return out or [args]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Args(cli_utils.Args):
  """TFDS command line, build command only (runs without TensorFlow)."""

  command: build.Args = simple_parsing.subparsers({'build': build.Args})

  def execute(self) -> None:
    for command in per_source(self.command):
      command.execute()


def main(args: Args) -> None:
  # As `tfds`: the built-in datasets stay visible, so a typo'd name gets TFDS's own message.
  tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                       tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
  args.execute()


if __name__ == '__main__':
  app.run(main, flags_parser=cli_utils.make_flags_parser(Args, description=__doc__))
