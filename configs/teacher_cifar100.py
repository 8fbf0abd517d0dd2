"""Teacher for data-free KD on CIFAR-100: as configs/teacher_cifar10.py on CIFAR-100.

  python -m rfd_jax.main --config configs/teacher_cifar100.py[:MODEL] --workdir runs/teacher_cifar100_MODEL
"""

from configs import teacher_cifar10


def get_config(model: str = "wrn40_2"):
  config = teacher_cifar10.get_config(model)
  config.data.dataset = "cifar100"
  return config
