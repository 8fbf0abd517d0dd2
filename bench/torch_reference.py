r"""PyTorch reference of the two JAX benchmarks (bench/step.py and bench/inversion.py), written from
the spec (docs: /work/shared/spec/rfd.md §2.1–2.3, §4, §5.1), for a speed comparison on one machine.

  python bench/torch_reference.py --workload rfd_step|inversion_iter [--image_size 32]
      [--batch_size 128] [--steps 10] [--no_channels_last] [--no_flops] [--threads 0]
      [--device cpu|cuda] [--amp none|bf16]

rfd_step: the RFD main-phase train step of CIFAR-100 10 × 10, task 6 (50 old + 10 new classes):
  normalise + random-crop/flip the uint8 real batch; generator (eval, no grad) → a synthetic batch
  of the same size; the frozen teacher ResNet-32 (eval) over real ∪ synthetic in one pass, which
  also gives the stage-1 map of the real images; three train-mode student passes (real, synthetic,
  hybrid = student stages 2–4 + head on the teacher's stage-1 map); w_ce·local CE + w·DIST(syn)
  + w·DIST(real) (Pearson inter + intra on the old-class logits, τ = 4) + w_lfd·MSE(pooled real,
  pooled hybrid); SGD (momentum 0.9, weight decay 5e-4).
inversion_iter: one generator (Adam) step: generator in train mode → teacher in eval mode with a
  forward pre-hook on every BatchNorm2d recording the batch mean / biased variance of its input →
  CE(o/1000, argmax o) + class balance + 1e-3·smoothness + 50·BN-KL → backward → Adam.

Prints the median ms/step over --steps steps after two warm-up steps, images/s (real images, or
generated images for the inversion), GFLOP/step counted by torch.utils.flop_counter (convs and
matmuls, forward + backward), GFLOP/s, process CPU seconds per step and peak RSS; on CUDA also the
peak GPU memory (torch.cuda.max_memory_allocated). torch.set_num_threads is left at its default.
--device cuda runs on the GPU (cudnn.benchmark on, as usual for fixed shapes); --amp bf16 runs the
forward passes and losses under torch.autocast(bfloat16) (parameters, optimizer and BN running
statistics stay float32), the counterpart of the JAX benches' --dtype bfloat16.
"""

import argparse
import math
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_OLD, NUM_NEW, NUM_TASKS, TASK_SIZE = 50, 10, 10, 10


# ---- ResNet-32 (cl_lite resnet_cifar) + RFD heads --------------------------------------------


def _conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Block(nn.Module):
  """conv3×3(s) → BN → ReLU → conv3×3 → BN(γ=0) → + shortcut (subsample + zero channels); no ReLU."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv_a, self.bn_a = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
    self.conv_b, self.bn_b = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
    nn.init.zeros_(self.bn_b.weight)
    self.stride, self.pad = stride, cout - cin

  def forward(self, x):
    y = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
    shortcut = x
    if self.stride != 1 or self.pad:
      shortcut = x[:, :, ::self.stride, ::self.stride]
      shortcut = torch.cat([shortcut, torch.zeros_like(shortcut[:, :self.pad])], 1)
    return y + shortcut


class ResNet32(nn.Module):
  """Stem conv3×3(3→16) → BN → ReLU; stages of 5 @16, 5 @32 (s2), 4 @64 (s2), 1 @64; GAP; one
  Linear(64→64) → Linear(64→10) head per task (10 tasks → 100 logits)."""

  def __init__(self):
    super().__init__()
    self.stem = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU())
    layout = [(16, 16, 5, 1), (16, 32, 5, 2), (32, 64, 4, 2), (64, 64, 1, 1)]
    self.stages = nn.ModuleList(
        nn.Sequential(*[Block(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                        for i in range(n)]) for cin, cout, n, stride in layout)
    self.heads = nn.ModuleList(nn.Sequential(nn.Linear(64, 64, bias=False),
                                             nn.Linear(64, TASK_SIZE, bias=False))
                               for _ in range(NUM_TASKS))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def from_stage1(self, f1):
    """Stages 2–4 + GAP + heads on a stage-1 map: (logits (B, 100), pooled (B, 64))."""
    x = f1
    for stage in self.stages[1:]:
      x = stage(x)
    pooled = x.mean((2, 3))
    return torch.cat([h(pooled) for h in self.heads], 1), pooled

  def forward(self, x):
    """(logits (B, 100), pooled (B, 64), stage-1 map (B, 16, H, W))."""
    f1 = self.stages[0](self.stem(x))
    logits, pooled = self.from_stage1(f1)
    return logits, pooled, f1


# ---- Generator (spec §2.3, CIFAR layout) -----------------------------------------------------


class Generator(nn.Module):
  """z (B, 1000) → Linear → (128, s/4, s/4) → BN → [up ×2 → conv3×3 → BN(eps .8) → LReLU(.2)]
  × (128, 64) → conv3×3(64→3) → tanh → BN(3, affine=False) → (B, 3, s, s)."""

  def __init__(self, image_size):
    super().__init__()
    self.init_size = image_size // 4
    self.linear = nn.Linear(1000, 128 * self.init_size ** 2)
    self.bn0 = nn.BatchNorm2d(128)
    self.blocks = nn.Sequential(
        nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128, 0.8),
        nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, padding=1),
        nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2), nn.Conv2d(64, 3, 3, padding=1), nn.Tanh(),
        nn.BatchNorm2d(3, affine=False))

  def forward(self, z):
    x = self.linear(z).view(z.shape[0], 128, self.init_size, self.init_size)
    return self.blocks(self.bn0(x))


# ---- Losses ----------------------------------------------------------------------------------


def _pearson(a, b, dim):
  a = a - a.mean(dim, keepdim=True)
  b = b - b.mean(dim, keepdim=True)
  return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)


def dist_loss(student, teacher, tau=4.0):
  """DIST: (1 − mean_i pearson over classes) + (1 − mean_c pearson over samples) of the τ-softmaxes."""
  p, q = F.softmax(student / tau, 1), F.softmax(teacher / tau, 1)
  return (1 - _pearson(p, q, 1).mean()) + (1 - _pearson(p, q, 0).mean())


def loss_weights(num_old, num_new):
  """R-DFCIL / RFD adaptive weights (spec §5.1) with the CIFAR λs."""
  alpha, beta = math.log2(num_new / 2 + 1), math.sqrt(num_old / num_new)
  return {"ce": 0.5 * (1 + 1 / alpha) / beta, "dist_old": 0.15 * alpha * beta ** 2,
          "dist_new": 0.15 * alpha * beta ** 2, "lfd": 0.05 * alpha * beta}


BLUR = torch.outer(*(2 * [torch.exp(-((torch.arange(5.0) - 2) / 2) ** 2)]))
BLUR = (BLUR / BLUR.sum()).expand(3, 1, 5, 5).contiguous()


def smoothness_prior(x):
  """mean((x − blur(reflectpad(x, 2)))²), depthwise 5×5 blur."""
  blur = BLUR.to(device=x.device, dtype=x.dtype)
  return ((x - F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), blur, groups=3)) ** 2).mean()


# ---- Workloads -------------------------------------------------------------------------------


def _augment(images, mean, std):
  """uint8 (B, H, W, 3) → normalised (B, 3, H, W), random 4-px-pad crop (zero fill) and flip."""
  x = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
  b, _, h, w = x.shape
  dev = x.device
  padded = F.pad(x, (4, 4, 4, 4))
  dy, dx = torch.randint(0, 9, (b,), device=dev), torch.randint(0, 9, (b,), device=dev)
  rows = dy[:, None] + torch.arange(h, device=dev)[None]
  cols = dx[:, None] + torch.arange(w, device=dev)[None]
  flip = torch.rand(b, device=dev) < 0.5
  cols = torch.where(flip[:, None], cols.flip(1), cols)
  return padded[torch.arange(b, device=dev)[:, None, None, None],
                torch.arange(3, device=dev)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]


def _autocast(device, amp):
  """torch.autocast in bfloat16 when amp == "bf16", else a no-op context."""
  return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def make_rfd_step(size, batch, memory_format, device=torch.device("cpu"), amp="none"):
  student, teacher = ResNet32(), ResNet32()
  generator = Generator(size).eval()
  for m in (student, teacher, generator):
    m.to(device=device, memory_format=memory_format)
  teacher.eval().requires_grad_(False)
  generator.requires_grad_(False)
  student.train()
  opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  w = loss_weights(NUM_OLD, NUM_NEW)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)).to(device)
  labels = torch.from_numpy(rng.integers(NUM_OLD, NUM_OLD + NUM_NEW, (batch,))).to(device)
  mean = torch.full((1, 3, 1, 1), 0.5, device=device)
  std = torch.full((1, 3, 1, 1), 0.25, device=device)

  def step():
    real = _augment(images, mean, std).contiguous(memory_format=memory_format)
    with torch.no_grad(), _autocast(device, amp):
      syn = generator(torch.randn(batch, 1000, device=device)).contiguous(
          memory_format=memory_format)
      t_logits, _, t_f1 = teacher(torch.cat([real, syn]))
      t_logits = t_logits[:, :NUM_OLD]
      t_real, t_syn = t_logits[:batch], t_logits[batch:]
      t_real_f1 = t_f1[:batch]
      syn_labels = t_syn.argmax(1)
    with _autocast(device, amp):
      z_real, pooled_real, _ = student(real)
      z_syn, _, _ = student(syn)
      _, pooled_hybrid = student.from_stage1(t_real_f1)
      loss_ce = F.cross_entropy(z_real[:, NUM_OLD:NUM_OLD + NUM_NEW], labels - NUM_OLD)
      loss = (w["ce"] * loss_ce + w["dist_old"] * dist_loss(z_syn[:, :NUM_OLD].float(),
                                                            t_syn.float())
              + w["dist_new"] * dist_loss(z_real[:, :NUM_OLD].float(), t_real.float())
              + w["lfd"] * F.mse_loss(pooled_real.float(), pooled_hybrid.float()))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), syn_labels

  return step


def make_inversion_step(size, batch, memory_format, device=torch.device("cpu"), amp="none"):
  teacher, generator = ResNet32(), Generator(size)
  for m in (teacher, generator):
    m.to(device=device, memory_format=memory_format)
  teacher.eval().requires_grad_(False)
  generator.train()
  opt = torch.optim.Adam(generator.parameters(), lr=1e-3)
  bn_layers = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
  stats = []

  def hook(module, inputs):
    x = inputs[0].float()
    stats.append((module, x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))

  for m in bn_layers:
    m.register_forward_pre_hook(hook)

  def bn_kl():
    terms = []
    for m, mu, var in stats:
      var = var + 1e-8
      terms.append((0.5 * (torch.log(var / (m.running_var + 1e-8))
                           + (m.running_var + (m.running_mean - mu) ** 2 + 1e-8) / var
                           - 1)).mean())
    return torch.stack(terms).mean()

  def step():
    stats.clear()
    with _autocast(device, amp):
      x = generator(torch.randn(batch, 1000, device=device)).contiguous(
          memory_format=memory_format)
      logits = teacher(x)[0][:, :NUM_OLD].float()
      targets = logits.argmax(1).detach()
      loss_ce = F.cross_entropy(logits / 1000.0, targets)
      p = F.softmax(logits, 1).mean(0)
      loss_balance = 1 + (p * torch.log(p)).sum() / math.log(NUM_OLD)
      loss = loss_ce + loss_balance + 1e-3 * smoothness_prior(x.float()) + 50 * bn_kl()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workload", choices=("rfd_step", "inversion_iter"), required=True)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--no_channels_last", action="store_true")
  parser.add_argument("--no_flops", action="store_true")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads (0: leave torch's default, one per core)")
  parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  parser.add_argument("--amp", default="none", choices=("none", "bf16"),
                      help="bf16: forward passes and losses under torch.autocast(bfloat16)")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = torch.device(args.device)
  cuda = device.type == "cuda"
  if cuda:
    torch.backends.cudnn.benchmark = True
  fmt = torch.contiguous_format if args.no_channels_last else torch.channels_last
  make = make_rfd_step if args.workload == "rfd_step" else make_inversion_step
  step = make(args.image_size, args.batch_size, fmt, device, args.amp)
  flops = 0.0
  if not args.no_flops:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
      step()
    flops = counter.get_total_flops()
  step()  # warm-up (the flop-counted step is a warm-up too)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  times = []
  cpu_start = time.process_time()
  for _ in range(args.steps):
    sync()
    start = time.perf_counter()
    step()
    sync()  # step() already waits for its loss (.item()); this also waits for the update
    times.append(time.perf_counter() - start)
  per_step = float(np.median(times))
  cpu_per_step = (time.process_time() - cpu_start) / args.steps
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  layout = "NCHW" if args.no_channels_last else "channels_last"
  where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} threads"
  print(f"torch {torch.__version__}, {args.device} ({where}), {args.workload}, "
        f"{args.image_size} px, batch {args.batch_size}, {layout}, amp {args.amp}")
  flop_text = f"  {flops / 1e9:.2f} GFLOP/step  {flops / per_step / 1e9:.1f} GFLOP/s" if flops else ""
  gpu_text = (f"  peak device memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
              if cuda else "")
  print(f"{1000 * per_step:9.1f} ms/step (median of {args.steps})  "
        f"{args.batch_size / per_step:8.1f} images/s{flop_text}  cpu {cpu_per_step:.2f} s/step  "
        f"peak RSS {rss:.0f} MiB{gpu_text}")


if __name__ == "__main__":
  main()
