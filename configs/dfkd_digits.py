"""The offline DFKD default: RGAL on scikit-learn's digits at 16 px, WRN-16-2 → WRN-16-1.

  python -m rfd_jax.main --config configs/teacher_digits.py --workdir runs/teacher_digits
  python -m rfd_jax.main --config configs/dfkd_digits.py --workdir runs/dfkd_digits

The CIFAR-10 settings of configs/dfkd_cifar10.py scaled to a 2-core CPU: 10 epochs of one 40-step
synthesis round at batch 64 (generator width ngf 32: at 16 px the CMI generator's 64 would cost
more than the two classifiers together) and 20 student steps at 2 × 32 views; shifts over black, no
flips (digits are not mirror-symmetric).
"""

from configs import dfkd_cifar10


def get_config(pair: str = "wrn"):
  del pair
  config = dfkd_cifar10.get_config("wrn")
  config.teacher_ckpt = "runs/teacher_digits"
  config.teacher_model = "wrn16_2"
  config.model.name = "wrn16_1"
  config.data.dataset = "digits"
  config.data.image_size = 16
  config.data.batch_size = 32
  config.data.eval_batch_size = 180
  config.data.crop_padding = 2
  config.data.flip = False
  config.synthesis.iterations = 40
  config.synthesis.batch_size = 64
  config.synthesis.ngf = 32
  config.synthesis.chunk_steps = 10  # of the 40 iterations per jitted call
  config.student.kd_steps = 20
  config.optim.epochs = 10
  return config
