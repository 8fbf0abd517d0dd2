"""The embedded default: 5 tasks × 2 classes on scikit-learn's digits (offline, real data).

CIFAR-100 settings scaled to 1257 training images: 16 px images (the digits are 8×8; 32 px costs
5× the compute on CPU for no extra detail), batch 32, lr 0.05 (0.1 diverges at this batch size),
20 epochs per task, method rfd.
"""

from configs import cifar100


def get_config():
  config = cifar100.get_config()
  config.method = "rfd"
  config.data.dataset = "digits"
  config.data.num_tasks = 5
  config.data.class_order = "seed0"
  config.data.image_size = 16
  config.data.batch_size = 32
  config.data.eval_batch_size = 128
  # Digits have a black background and no mirror symmetry: grey (mean-colour) padding bars and
  # mirrored digits would mark real images apart from the unaugmented synthetic replay, a shortcut
  # the student learns (new-class test accuracy fell to 11% with the CIFAR augmentation and real
  # old-class replay). Shift by up to 2 px over black instead, no flip.
  config.data.crop_padding = 2
  config.data.crop_fill = "black"
  config.data.flip = False
  config.optim.lr = 0.05
  config.optim.epochs = 20
  config.optim.ft_epochs = 4
  config.optim.milestones = (10, 14)
  # Head fine-tuning (rfd, rdfcil) gets 4 epochs × 7 steps here against 40 × 39 on CIFAR-100; the
  # paper's lr 0.005 barely moves the heads in 28 steps, so it is scaled up with the main lr.
  config.optim.ft_lr = 0.05
  # The inversion loss flattens by ~200 iterations on digits (BN-KL 0.0053 at 200, 0.0042 at 400).
  # The first incremental task has 2 old classes, where DIST's inter-class term is a step function
  # with a ~1e6-1e8x gradient spike at logit ties; one such step wiped out task 2 (order seed1: A_2
  # 25.23% → 76.17%, final 41.48% → 70.37% without it). docs/rfd_first_task.md.
  config.distill.dist_inter_min_old = 3
  config.inversion.iterations = 200
  config.inversion.chunk_steps = 50
  config.inversion.batch_size = 32
  config.log.every_steps = 10
  config.ckpt.every_steps = 100
  return config
