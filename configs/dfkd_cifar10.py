"""RGAL data-free knowledge distillation on CIFAR-10, WRN-40-2 → WRN-16-1 (spec rgal.md §5, the
RGAL README command).

  python -m rfd_jax.main --config configs/dfkd_cifar10.py[:PAIR] --config.teacher_ckpt=TEACHER_RUN

PAIR: wrn (WRN-40-2 → WRN-16-1, default) | resnet (ResNet-34 → ResNet-18). TEACHER_RUN: the workdir
of a configs/teacher_cifar10.py[:wrn40_2|:resnet34_cifar] run. Needs prepared TFDS data and a GPU
or TPU: 200 epochs × (400 synthesis iterations at batch 256 + 400 student steps at 2 × 128).
"""

import ml_collections

PAIRS = {"wrn": ("wrn40_2", "wrn16_1"), "resnet": ("resnet34_cifar", "resnet18_cifar")}


def get_config(pair: str = "wrn") -> ml_collections.ConfigDict:
  if pair not in PAIRS:
    raise ValueError(f"configs/dfkd_*.py:{pair}: expected one of {sorted(PAIRS)}")
  teacher, student = PAIRS[pair]
  config = ml_collections.ConfigDict()
  config.job = "dfkd"
  config.seed = 0
  # float32 | bfloat16: what the convolutions of the student and the generator compute in (the
  # teacher's: its own run's config.dtype); bfloat16 casts their inputs and kernels to bf16 and
  # results back to float32 (activations, BN, parameters, losses and the optimizer stay float32).
  config.dtype = "float32"
  config.teacher_ckpt = ""  # workdir of the teacher run (configs/teacher_*.py)
  config.teacher_model = teacher  # checked against the model the teacher run trained

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"
  config.data.data_dir = ""
  config.data.image_size = 32
  config.data.batch_size = 128  # pool images per student step (2 views each: 256 inputs)
  config.data.eval_batch_size = 512  # a multiple of 8 and 16 devices (v5e-8, v5e-16)
  config.data.crop_padding = 4  # synthesis and student views: random crop (pad 4, black), flip
  config.data.crop_fill = "black"
  config.data.flip = True

  config.model = ml_collections.ConfigDict()
  config.model.name = student

  config.synthesis = ml_collections.ConfigDict()
  config.synthesis.iterations = 400  # g_steps per round (one round per epoch)
  config.synthesis.batch_size = 256
  config.synthesis.lr = 1e-3  # Adam on generator params and z, re-created every round
  config.synthesis.beta1 = 0.5
  config.synthesis.beta2 = 0.999
  config.synthesis.nz = 256
  config.synthesis.ngf = 64
  config.synthesis.chunk_steps = 100  # iterations per jitted call (a progress line and checkpoint
                                      # chance between chunks); divides iterations
  config.synthesis.loop = "auto"  # scan (one lax.scan per chunk) | host (a loop over one jitted
                                  # step; faster on XLA:CPU) | auto: host on CPU, scan elsewhere
  config.synthesis.upsample = "auto"  # phases | repeat | auto: the generator's upsample → conv3×3
                                      # as 2×2 phase convolutions on CPU (configs/cifar100.py)

  config.student = ml_collections.ConfigDict()
  config.student.kd_steps = 400  # student steps per epoch
  config.student.pair_sample = True

  # Loss weights (spec §3.3, §4.2). Baselines: DeepInversion-style adv=triplet=cd=striplet=0;
  # DFQ/CMI-style adversarial triplet=cd=striplet=0.
  config.rgal = ml_collections.ConfigDict()
  config.rgal.bn = 1.0  # synthesis: BN statistics (L2 norms), teacher CE on random targets,
  config.rgal.oh = 1.0  # adversarial teacher-student KL on agreeing samples,
  config.rgal.adv = 1.0
  config.rgal.triplet = 0.1  # and the focal-sampled triplet on the student's stage features
  config.rgal.syn_triplet_direction = "paper"  # paper (push same-label apart) | released_code
  config.rgal.triplet_layers = (2, 4)  # student stages [2:4]: WRN stage3; ResNet stage3, stage4
  config.rgal.kd_temperature = 20.0  # student: KD at T
  config.rgal.cd = 0.1  # + pooled stage-feature regression through 1×1 convs
  config.rgal.striplet = 0.1  # + distance-weighted triplet on the pooled feature

  config.optim = ml_collections.ConfigDict()
  config.optim.epochs = 200
  config.optim.lr = 0.1  # SGD, cosine per epoch
  config.optim.momentum = 0.9
  config.optim.weight_decay = 1e-4

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
