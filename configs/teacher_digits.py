"""Teacher for the offline DFKD default: WRN-16-2 on scikit-learn's digits at 16 px (no download).

  python -m rfd_jax.main --config configs/teacher_digits.py --workdir runs/teacher_digits

30 epochs of 39 steps (batch 32), lr 0.05 cosine, shift by up to 2 px over black, no flip (digits
are not mirror-symmetric). About two minutes on a 2-core CPU.
"""

from configs import teacher_cifar10


def get_config(model: str = "wrn16_2"):
  config = teacher_cifar10.get_config(model)
  config.data.dataset = "digits"
  config.data.image_size = 16
  config.data.batch_size = 32
  config.data.eval_batch_size = 180  # 540 test images = 3 batches
  config.data.crop_padding = 2
  config.data.flip = False
  config.optim.epochs = 30
  config.optim.lr = 0.05
  return config
