"""Sequential Tiny-ImageNet: 200 classes, 5 tasks × 40, 64 px, ResNet-32 (spec §1.1, §2.1, §3.1).

Reads the official tiny-imagenet-200 folder (see README, "Larger benchmarks"):
  --config.data.data_dir=/path/containing/tiny-imagenet-200
Otherwise the CIFAR-100 paper settings: 200 epochs per task, 40 of head fine-tuning, lr 0.1 → ×0.1
at 80/120, ft lr 0.005. The dataset name does not start with "imagenet", so RFD uses ResNet-32.
"""

from configs import cifar100


def get_config():
  config = cifar100.get_config()
  config.data.dataset = "tiny_imagenet"
  config.data.data_dir = ""  # folder holding tiny-imagenet-200/ (required)
  config.data.num_tasks = 5
  config.data.class_order = "seed0"  # first class 131 (an index into wnids.txt, in file order)
  config.data.image_size = 64
  config.data.batch_size = 256  # RFD's config (R-DFCIL used 128)
  config.data.decode_threads = 0  # threads decoding the JPEGs once at start (0: one per core)
  config.optim.weight_decay = 2e-4
  config.inversion.batch_size = 256  # = the real batch (spec §3.1)
  config.inversion.iterations = 5000
  return config
