"""Seq-Fashion-MNIST: 5 tasks × 2 classes, ResNet-32, method rfd; a CIFAR-10-sized real benchmark.

  python -m rfd_jax.main --config configs/fashion_mnist.py[:VARIANT] --config.data.data_dir=DIR

Needs the prepared TFDS data (README, "Datasets"): `apt-get install dataset-fashion-mnist`, then
`python -m rfd_jax.prepare_data fashion_mnist --data_dir DIR`.

VARIANT:
  cpu (default): sized for about 10 minutes per rfd run on a 2-core CPU. The digits settings
    (configs/digits.py: 16 px, batch 32, lr 0.05, 20 epochs per task, 200 inversion iterations)
    on a fixed subset: the first 200 training images of each class in the prepared record order
    (TFDS's fixed key-hash order of the file indices, so the same 2,000 images on every machine),
    400 per task like digits' ~250. The test set is the full 10,000 images.
  full: for accelerators, the CIFAR-10 protocol of the papers (configs/cifar10.py): all 60,000
    training images, 32 px (bilinear from 28), batch 128, 200 epochs per task (40 of head
    fine-tuning), 5000 inversion iterations; only the augmentation below differs.

Augmentation (both variants), revisited from the digits reasoning: the items are white on an exactly
black background, so shifts are padded with black (the mean-colour padding would paint grey bars
that mark real images apart from the unaugmented synthetic replay). No horizontal flip: the clothing
classes are near mirror-symmetric, so a flip adds almost nothing there, while every sneaker and ankle
boot (and 93% of sandals) points its toe to the left -- mirrored footwear never occurs in the test
set and would be exactly such an augmentation-only mark on the real images. Items fill the 28 px
frame along their long side, so the shift stays at 1/8 of the side as in CIFAR's 4 of 32 px: 2 px
at 16 px, 4 px at 32 px.
"""

import ml_collections

from configs import cifar10, digits

VARIANTS = ("cpu", "full")


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
  if variant == "cpu":
    config = digits.get_config()
    config.data.train_per_class = 200  # first N of each class; 0 = all 60,000 (see docstring)
    config.data.crop_padding = 2
  elif variant == "full":
    config = cifar10.get_config()
    config.data.train_per_class = 0
    config.data.image_size = 32
    config.data.crop_padding = 4
  else:
    raise ValueError(f"unknown configs/fashion_mnist.py variant {variant!r}; expected one of "
                     f"{VARIANTS}")
  config.method = "rfd"
  config.data.dataset = "fashion_mnist"
  config.data.num_tasks = 5
  config.data.class_order = "seed0"
  config.data.crop_fill = "black"
  config.data.flip = False
  return config
