"""Converters from the files users have (CIFAR archives, idx files) to TFDS array_record datasets.

`tfds_writer` writes any parsed dataset through tfds's own registered builder; `cifar` and
`fashion_mnist` each parse one source format. The command line is `python -m rfd_jax.prepare_data`.
"""
