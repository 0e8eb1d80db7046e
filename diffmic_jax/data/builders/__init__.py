"""Split resolution per dataset: manual directory -> `{split: [Example]}`, no pixels touched.

`RESOLVERS[name]` gives the module for a `data.name`; each module has `NUM_CLASSES` (or None when
the data decide), `CLASS_NAMES`, `SCHEMES` and `resolve(manual_dir, scheme, num_classes)`.
The TFDS builders that write array_record live in `tfds_builders.py`.
"""

from diffmic_jax.data.builders import aptos2019, image_folder, isic2018, medmnist

RESOLVERS = {
    'aptos2019': aptos2019,
    'isic2018': isic2018,
    'image_folder': image_folder,
    'medmnist': medmnist,
}
