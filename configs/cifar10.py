"""Sequential CIFAR-10: 5 tasks × 2 classes, otherwise the CIFAR-100 paper settings.

RFD's released config uses 6 tasks with R-DFCIL's split (5 base classes, then 1 class per task):
  --config.data.num_tasks=6 --config.data.task_split=rdfcil
With 1-class tasks a local CE over a single logit is identically 0.
"""

from configs import cifar100


def get_config():
  config = cifar100.get_config()
  config.data.dataset = "cifar10"
  config.data.num_tasks = 5
  config.data.class_order = "seed0"
  return config
