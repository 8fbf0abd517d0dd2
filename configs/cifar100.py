"""CIFAR-100, 10 tasks × 10 classes, ResNet-32: the paper settings of spec §1.1 and §3.1.

Needs prepared TFDS data (see README, "Datasets"). Meant for a GPU/TPU: 200 epochs per task.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = "rfd"  # rfd | rdfcil | abd | deepinversion | finetune | joint
  config.seed = 0
  # float32 | bfloat16: what every convolution of every network the run builds (the backbone,
  # ResNet-32 or ResNet-18, and the inversion generator) computes in. bfloat16 casts each conv's
  # input and kernel to bf16 and its result back to float32; activations, BN, parameters, losses
  # and the optimizer stay float32. Faster on CPU (bench/RESULTS.md), changes the numerics slightly.
  config.dtype = "float32"

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar100"
  config.data.data_dir = ""  # TFDS data_dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.num_tasks = 10
  config.data.class_order = "seed1"  # RFD's order (first class 53); R-DFCIL used seed0
  config.data.task_split = "equal"  # equal | rdfcil (R-DFCIL's split_task)
  config.data.image_size = 32
  config.data.batch_size = 128  # real batch (synthetic and inversion batches match it)
  config.data.crop_padding = 4  # training augmentation: random crop of the padded image ...
  config.data.crop_fill = "normalized"  # ... padded with 0 after normalisation (the mean colour)
  config.data.flip = True  # ... and a horizontal flip
  config.data.eval_batch_size = 512  # a multiple of the device count (the last batch is padded)
  # The train set lives on the device and batches are gathered there (in-memory datasets; the
  # lazily decoded ImageNet folders always stream from the host). False: host batches every step.
  config.data.device_resident = True

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet32"  # resnet32 | resnet32_he | resnet18 | resnet_tiny (smoke tests)
  config.model.head = "rfd"  # rfd: Linear(F→F)→Linear(F→n_t) per task; linear: one Linear

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 0.1
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.epochs = 200  # E per task, including the head fine-tuning epochs
  config.optim.ft_epochs = 40  # E_ft: head fine-tuning, tasks >= 1 of methods that have it
  config.optim.milestones = (80, 120)  # main-phase epochs where lr is multiplied by lr_decay
  config.optim.lr_decay = 0.1
  config.optim.ft_lr = 0.005  # constant; higher than the last main-phase lr, as in the paper code
  # scan: an epoch per jitted call (lax.scan over device-resident data) | host: a call per step |
  # auto: host on CPU (XLA:CPU runs rolled conv loops slowly), scan on GPU/TPU.
  config.optim.loop = "auto"

  # A group of runs in one process (rfd_jax.jobs.group): every combination of these class orders and
  # seeds, stepped together (vmapped) into WORKDIR/<method>/<order>[-s<seed>]/; "" = the single
  # run of data.class_order / seed. E.g. class_orders = "seed0,seed1,seed2" or "seed0-seed4".
  config.runs = ml_collections.ConfigDict()
  config.runs.class_orders = ""
  config.runs.seeds = ""

  # Model inversion of the previous model, before each task >= 1 (spec §4).
  config.inversion = ml_collections.ConfigDict()
  config.inversion.iterations = 5000
  config.inversion.chunk_steps = 100  # iterations per chunk: progress line / checkpoint granularity
  config.inversion.loop = "auto"  # scan | host | auto (host loop on CPU, where XLA's scan is slow)
  # The generator's upsample → conv3×3: phases (four 2×2 convolutions at the low resolution) |
  # repeat (on the ×4 upsampled input) | auto (phases on CPU, repeat on GPU/TPU). Same function.
  config.inversion.upsample = "auto"
  config.inversion.batch_size = 128
  config.inversion.lr = 1e-3  # Adam, default betas
  config.inversion.generator = "auto"  # auto (abd: one generator for all tasks; else fresh) | fresh | reuse
  config.inversion.ce_weight = 1.0
  config.inversion.ce_temperature = 1000.0
  config.inversion.balance_weight = 1.0
  config.inversion.smoothness_weight = 1e-3
  config.inversion.bn_weight = 50.0
  # kind: standard (the loss above) | rgal (+ config.rgal.triplet · RGAL's focal-sampled triplet on
  # the teacher's stage-3/4 features; and, method rfd, config.rgal.striplet · the triplet on the
  # replay: rgal.md §7).
  config.inversion.kind = "standard"

  # Student losses of the distillation learners (spec §5, §6).
  config.distill = ml_collections.ConfigDict()
  config.distill.lambda_ce = 0.5  # rfd, rdfcil: w_ce = λ(1 + 1/α)/β
  config.distill.lambda_dist_old = 0.15  # rfd: DIST on synthetic old-class logits, × αβ²
  config.distill.lambda_dist_new = 0.15  # rfd: DIST on real old-class logits, × αβ²
  config.distill.lambda_lfd = 0.05  # rfd: low-level feature distillation, × αβ (ImageNet: 0.15)
  config.distill.dist_temperature = 4.0  # rfd: DIST τ
  config.distill.dist_inter_weight = 1.0  # rfd: DIST's β (inter-class term; RFD: 1)
  config.distill.dist_intra_weight = 1.0  # rfd: DIST's γ (intra-class term; RFD: 1)
  # rfd: DIST's inter-class term only while the teacher knows >= this many classes. With 2 it is
  # a step function with a ~1e8 gradient spike at ties (docs/rfd_first_task.md); 3 drops it there.
  config.distill.dist_inter_min_old = 2
  config.distill.lambda_hkd = 0.15  # rdfcil: L1 hard KD on synthetic old logits, × αβ
  config.distill.lambda_rkd = 0.5  # rdfcil: RKD angle on real features, × αβ
  config.distill.lambda_ft_ce = 0.5  # rfd, rdfcil head fine-tuning: class-weighted global CE
  config.distill.abd_mu = 0.1  # abd: feature distillation weight
  config.distill.lwf_mu = 1.0  # deepinversion: LwF KD weight
  config.distill.lwf_temperature = 2.0

  # RGAL's weights, used with inversion.kind=rgal (the same names as in the dfkd job's configs).
  config.rgal = ml_collections.ConfigDict()
  config.rgal.triplet = 0.1  # synthesis triplet weight (RGAL's 0.1)
  config.rgal.syn_triplet_direction = "paper"  # paper (push same-label apart) | released_code
  config.rgal.striplet = 0.1  # method rfd: student-side triplet on the replay (RGAL's 0.1)

  config.log = ml_collections.ConfigDict()
  config.log.progress = True  # a line per epoch and per inversion chunk; False for quiet runs (CI)
  config.log.every_steps = 50  # metrics.jsonl / TensorBoard interval; losses are checked finite here
  config.log.images = True  # PNGs in the workdir: synthetic replay grids, accuracy matrix and curve

  # Checkpoints in WORKDIR/checkpoints; a run resumes from the latest one (README, "Resuming").
  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.enabled = True
  config.ckpt.every_steps = 1000  # global steps (train steps, inversion iterations) between saves
  # the last N checkpoints are kept (>= 2: one survives a corrupted newest), and for good the one at
  # the end of every task (WORKDIR/checkpoints/<step>, for config.init_from; see README)
  config.ckpt.keep = 3
  config.ckpt.allow_config_change = False  # True: resume even if result-changing fields differ
  config.init_from = ""  # a run's workdir / checkpoints dir / checkpoint to start from if the
                         # workdir has no checkpoint ("" = from scratch)
  return config
