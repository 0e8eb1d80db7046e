"""diffmic-jax: DiffMIC in JAX / Flax Linen.

Data flows one way: config -> data -> models -> train / evaluate -> checkpoint. `Classifier`
(diffmic_jax.inference) is a trained run as a Python object; it is imported on first use, so
`python -m diffmic_jax.main` parses its flags before JAX starts.
"""

__version__ = "0.1.0"


def __getattr__(name):
  if name in ('Classifier', 'Prediction'):
    from diffmic_jax import inference
    return getattr(inference, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
