"""RGAL data-free knowledge distillation on CIFAR-100: configs/dfkd_cifar10.py on CIFAR-100.

  python -m rfd_jax.main --config configs/dfkd_cifar100.py[:wrn|:resnet] --config.teacher_ckpt=TEACHER_RUN

wrn: WRN-40-2 → WRN-16-1; resnet: ResNet-34 → ResNet-18 (teachers from configs/teacher_cifar100.py).
"""

from configs import dfkd_cifar10


def get_config(pair: str = "wrn"):
  config = dfkd_cifar10.get_config(pair)
  config.data.dataset = "cifar100"
  return config
