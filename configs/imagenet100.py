"""ImageNet-100 (PODNet subset): 10 tasks × 10, 224 px, ResNet-18 (spec §1.1, §2.1, §3.1).

Reads PODNet's train_100.txt / val_100.txt over an ImageNet folder (see README, "Larger
benchmarks"): --config.data.data_dir=/path/containing/imagenet100. Images are decoded on demand by
a thread pool with an LRU cache of decoded images; meant for a GPU/TPU: 120 epochs per task.
"""

from configs import cifar100


def get_config():
  config = cifar100.get_config()
  config.data.dataset = "imagenet100"
  config.data.data_dir = ""  # folder holding imagenet100/{train_100.txt,val_100.txt,train,val}
  config.data.num_tasks = 10
  config.data.class_order = "imagenet1993"  # PODNet / ABD order, first class 68
  config.data.image_size = 224  # Resize(256) + CenterCrop(224); a smaller size scales both
  config.data.batch_size = 64
  # a multiple of 8 and 16 devices (v5e-8, v5e-16; rfd_jax.tools.aot); the 5,000 test images are 20
  # batches, the last one zero-padded
  config.data.eval_batch_size = 256
  config.data.decode_threads = 0  # image-decoding threads (0: one per CPU core, at most 32)
  config.data.cache_gb = 4.0  # per split: LRU of decoded images (an ImageNet-100 task is ~2 GB)
  config.model.name = "resnet18"  # PODNet variant: 3×3 stride-1 stem + maxpool
  config.optim.weight_decay = 1e-4
  config.optim.epochs = 120
  config.optim.ft_epochs = 30
  config.optim.milestones = (30, 60)
  config.inversion.batch_size = 64  # = the real batch (spec §3.1)
  config.inversion.iterations = 10000
  config.distill.lambda_lfd = 0.15  # RFD's ImageNet λ_kd (CIFAR / Tiny: 0.05), spec §5.1
  return config
