"""Converters from the files users have (CIFAR archives) to TFDS array_record datasets.

`tfds_writer` writes any parsed dataset through tfds's own registered builder; `cifar` parses the
CIFAR python archives. The command line is `python -m rfd_jax.prepare_data`.
"""
