"""Data: datasets as host uint8 arrays, one module per source, and on-device augmentation.
Imports nothing from the rest of the package.

  datasets       Dataset / DatasetInfo, the dataset registry, epoch_batches
  sources        load_dataset(config.data): a dataset by name from its source
  sklearn_digits sklearn's 8×8 digits (no download)
  tfds_source    prepared TFDS array_record splits (CIFAR-10/100, Fashion-MNIST), no TensorFlow
  image_folders  Tiny-ImageNet / ImageNet-100 / ImageNet-R file lists and class ids
  image_decode   Resize + CenterCrop decoding on a thread pool, LazyImages, prefetch_rows
  augment        normalize, Augmentation (crop, flip, colour jitter) inside the jitted steps
  prepare/       converters to TFDS array_record (the `python -m rfd_jax.prepare_data` command)
"""
