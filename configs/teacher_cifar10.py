"""Teacher for data-free KD: a classifier trained on real CIFAR-10 (the CMI / RGAL recipe).

  python -m rfd_jax.main --config configs/teacher_cifar10.py[:MODEL] --workdir runs/teacher_cifar10_MODEL

MODEL: wrn40_2 (default) | resnet34_cifar | any name in rfd_jax.models.dfkd_nets.CLASSIFIER_NAMES.
SGD lr 0.1 (momentum 0.9, weight decay 5e-4), cosine per epoch over 200 epochs, batch 128, random
crop (pad 4, black) and horizontal flip. Needs prepared TFDS data (README, "Datasets").
"""

import ml_collections


def get_config(model: str = "wrn40_2") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.job = "teacher"
  config.seed = 0
  # float32 | bfloat16: what the classifier's convolutions compute in; bfloat16 casts their inputs
  # and kernels to bf16 and results back to float32 (activations, BN, parameters stay float32).
  config.dtype = "float32"

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"
  config.data.data_dir = ""  # TFDS data_dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.image_size = 32
  config.data.batch_size = 128
  config.data.eval_batch_size = 512  # a multiple of the device count (8, 16: v5e-8, v5e-16)
  config.data.crop_padding = 4
  config.data.crop_fill = "black"  # torchvision RandomCrop pads the image with 0 before Normalize
  config.data.flip = True

  config.model = ml_collections.ConfigDict()
  config.model.name = model

  config.optim = ml_collections.ConfigDict()
  config.optim.epochs = 200
  config.optim.lr = 0.1  # cosine annealing to 0, stepped once per epoch
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4

  config.log = ml_collections.ConfigDict()
  config.log.progress = True
  config.log.images = False
  config.log.every_steps = 0  # a metrics record every this many global steps; 0: at the end
                              # of every segment (epoch, synthesis round) only

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.enabled = True  # after every evaluation and on SIGTERM/SIGINT; resumes from the
                              # newest (keyed by the global step)
  config.ckpt.every_steps = 0  # also every this many global steps; 0: off
  config.ckpt.keep = 2
  config.ckpt.allow_config_change = False
  return config
