"""ImageNet-R: 200 classes, 10 tasks × 20, 224 px, ResNet-18; otherwise the ImageNet-100 settings.

Reads <data_dir>/imagenet-r/<wnid>/* with CODA-Prompt's 80/20 split files
<data_dir>/imagenet-r_{train,test}.yaml, or writes a deterministic 80/20 split there when they are
absent (see README, "Larger benchmarks"): --config.data.data_dir=/path/containing/imagenet-r
"""

from configs import imagenet100


def get_config():
  config = imagenet100.get_config()
  config.data.dataset = "imagenet_r"
  config.data.data_dir = ""  # folder holding imagenet-r/ and the split files
  config.data.num_tasks = 10
  config.data.class_order = "seed0"  # first class 131
  return config
