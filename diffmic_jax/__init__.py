"""diffmic-jax: DiffMIC in JAX / Flax Linen.

Data flows one way: config -> data -> models -> train / evaluate -> checkpoint.
"""

__version__ = "0.1.0"
