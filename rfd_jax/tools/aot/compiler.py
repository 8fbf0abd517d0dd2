"""Compiling one call for a target and reading what the compiler says about it: memory per device,
flops and bytes per step, collectives, kernels; the roofline projection of a run.

Figures are per device, as XLA reports them for an SPMD program. XLA's cost analysis counts a
`lax.scan` (while loop) body once, so a scanned block's flops and bytes are those of one step (plus
the little outside the loop): `Call.per_call` steps run per call, `Call.units` over the run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import time
from typing import Any

from rfd_jax.tools.aot import run_calls

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B?\b")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def shape_bytes(text: str) -> int:
  """Bytes of the arrays an HLO shape string names, e.g. "(f32[2,3]{1,0}, s32[])" → 28."""
  total = 0
  for dtype, dims in _ARRAY.findall(text):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * DTYPE_BYTES[dtype]
  return total


def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of the collectives in optimized HLO text (an async pair counted
  once, at its -start; bytes: the result's size, the "-start" tuple's last element)."""
  out: dict[str, dict[str, int]] = {}
  for line in hlo.splitlines():
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    shape, kind, start = match.groups()
    if start and shape.startswith("("):  # async start: (operands..., result[, context])
      arrays = _ARRAY.findall(shape)
      shape = f"{arrays[-1][0]}[{arrays[-1][1]}]" if arrays else ""
    entry = out.setdefault(kind, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += shape_bytes(shape)
  return out


def gpu_kernels(hlo: str) -> int:
  """Kernels launched by one call: fusions and custom calls (cuDNN, cuBLAS) outside fused
  computations, each counted once (a scan body's kernels once: per step)."""
  count, fused = 0, False
  for line in hlo.splitlines():
    stripped = line.strip()
    if stripped.endswith("{") and "=" not in stripped.split("(")[0]:  # a computation's header
      fused = "fused" in stripped.split("(")[0] or "wrapped" in stripped.split("(")[0]
      continue
    if not fused and re.search(r"\s(fusion|custom-call)\(", stripped):
      count += 1
  return count


def out_of_memory(message: str) -> dict[str, Any] | None:
  """From a compile error, whether it is libtpu's out-of-HBM refusal and the sizes it names."""
  if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
    return None
  sizes = [float(n) * _UNITS[u] for n, u in _SIZE.findall(message)]
  return {"required_bytes": int(max(sizes)) if sizes else None,
          "message": message.strip().splitlines()[0][:300]}


def memory(compiled) -> dict[str, int]:
  """Bytes per device: arguments, outputs, aliased (donated into outputs), temporaries, code, and
  the total live at once (args + outputs - aliased + temps + code)."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
                  + out["code"])
  return out


def cost(compiled) -> dict[str, float] | None:
  """{"flops", "bytes"} per device of one call (a scan body once), or None if not reported."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return {"flops": float(analysis["flops"]), "bytes": float(analysis.get("bytes accessed", 0.0))}


def _compiled_figures(lowered, target_name: str, cache_dir: str | None) -> dict[str, Any]:
  """{"seconds", and "memory", "cost", "hlo" (optimized HLO text) or "oom"} of compiling
  `lowered`; cached in `cache_dir` under the target and the hash of the lowered program (a big
  function takes minutes to compile: the table of launch/README.md is regenerated from here)."""
  key = hashlib.sha256(lowered.as_text().encode()).hexdigest()[:24]
  path = (os.path.join(cache_dir, f"{target_name.replace(':', '_')}_{key}.json.gz")
          if cache_dir else None)
  if path and os.path.exists(path):
    with gzip.open(path, "rt") as f:
      return json.load(f)
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError; its type moves)
    oom = out_of_memory(str(e))
    if oom is None:
      raise
    figures = {"oom": oom}
  else:
    figures = {"memory": memory(compiled), "cost": cost(compiled), "hlo": compiled.as_text()}
  figures["seconds"] = round(time.perf_counter() - start, 1)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    with gzip.open(path + ".tmp", "wt") as f:
      json.dump(figures, f)
    os.replace(path + ".tmp", path)
  return figures


def compile_call(call: run_calls.Call, target, cache_dir: str | None = None) -> dict[str, Any]:
  """Lowers and compiles `call` for the target; its report (see the module docstring).

  fits: whether the program fits the target's memory per device (TPU: libtpu refuses one that does
  not, at compile time; GPU: XLA does not refuse, so the total is compared with the target's limit).
  """
  figures = _compiled_figures(call.lower(), target.name, cache_dir)
  report: dict[str, Any] = {"function": call.name, "units": call.units, "unit": call.unit,
                            "steps_per_call": call.per_call,
                            "compile_seconds": figures["seconds"]}
  if "oom" in figures:
    report.update(fits=False, memory={"total": figures["oom"]["required_bytes"]},
                  error=figures["oom"]["message"], cost=None, cost_source=None, collectives={})
    return report
  report["memory"] = figures["memory"]
  report["fits"] = report["memory"]["total"] <= target.memory_per_device
  report["cost"] = figures["cost"]
  report["cost_source"] = "target compiler" if report["cost"] else None
  report["collectives"] = collectives(figures["hlo"])
  if target.chip.kind == "gpu":
    report["kernels_per_step"] = gpu_kernels(figures["hlo"])
  return report


def cpu_cost(call: run_calls.Call, cache_dir: str | None) -> tuple[dict[str, float], float]:
  """(cost of `call` compiled by XLA:CPU on one device — the whole global batch —, compile
  seconds; 0 from the cache). Cached in `cache_dir` under the hash of the lowered program."""
  lowered = call.lower()
  key = hashlib.sha256(lowered.as_text().encode()).hexdigest()[:24]
  path = os.path.join(cache_dir, f"cpu_cost_{key}.json") if cache_dir else None
  if path and os.path.exists(path):
    with open(path) as f:
      return json.load(f), 0.0
  start = time.perf_counter()
  counts = cost(lowered.compile())
  seconds = time.perf_counter() - start
  if path and counts:
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(counts, f)
  return counts, seconds


def projection(reports: list[dict[str, Any]], *, peak_flops: float, bandwidth: float
               ) -> dict[str, Any]:
  """The roofline lower bound of the run: Σ over functions of units × max(flops ÷ peak_flops,
  bytes ÷ bandwidth), per-device figures of one unit (a step, an iteration, a batch)."""
  rows, total, missing = [], 0.0, []
  for r in reports:
    c = r.get("cost")
    if not c:
      missing.append(r["function"])
      continue
    unit_seconds = max(c["flops"] / peak_flops, c["bytes"] / bandwidth)
    seconds = r["units"] * unit_seconds
    total += seconds
    rows.append({"function": r["function"], "units": r["units"],
                 "unit_ms": unit_seconds * 1e3, "bound": "compute" if c["flops"] / peak_flops
                 >= c["bytes"] / bandwidth else "memory", "minutes": seconds / 60})
  return {"minutes": total / 60, "functions": rows, "peak_flops": peak_flops,
          "bandwidth": bandwidth, "without_figures": missing}
