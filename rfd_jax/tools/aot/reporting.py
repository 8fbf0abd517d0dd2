"""aot.json and the stdout table of rfd_jax.tools.aot."""

from __future__ import annotations

from typing import Any

import jax

from rfd_jax.tools.aot import targets

MIB = 2**20


def result(config, target: targets.Target, job: str, plan, facts: dict, reports: list[dict],
           projection: dict) -> dict[str, Any]:
  """What aot.json holds: the config, the target, each function's report and the projection."""
  chip = target.chip
  return {
      "config": {"job": job, "dataset": config.data.dataset, "method": config.get("method", job),
                 "model": config.model.name, "dtype": config.dtype,
                 "batch_size": config.data.batch_size, "num_tasks": facts["num_tasks"],
                 "runs": facts["runs"]},
      "target": {"name": target.name, "chip": chip.name, "devices": target.num_devices,
                 "hosts": target.num_hosts, "memory_per_device": target.memory_per_device,
                 "peak_flops": target.peak_flops(config.dtype), "bandwidth": target.bandwidth,
                 "source": chip.source},
      "jax": jax.__version__,
      "plan": {"total_steps": plan.total_steps,
               "train_loop": "scan" if any(s.block_steps > 1 for s in plan.segments
                                           if s.name in ("main", "finetune")) else "host",
               "resident_data": facts["resident_bytes"] > 0},
      "fits": all(r["fits"] for r in reports),
      "functions": reports,
      "projection": projection,
  }


def _mib(n: int | None) -> str:
  return "?" if n is None else f"{n / MIB:.1f}"


def table(res: dict[str, Any]) -> str:
  """The per-function table, the projection and the figures' sources, as text."""
  t, c = res["target"], res["config"]
  lines = [f"{c['dataset']} {c['method']} {c['model']} {c['dtype']}, batch {c['batch_size']}, "
           f"{c['num_tasks']} tasks, {c['runs']} run(s); {t['name']}: {t['devices']} × {t['chip']} "
           f"on {t['hosts']} host(s), {t['memory_per_device'] / 2**30:.2f} GiB per device; "
           f"train loop {res['plan']['train_loop']}",
           "",
           f"{'function':<28} {'compile s':>9} {'args':>8} {'out':>8} {'alias':>8} {'temp':>8} "
           f"{'code':>6} {'total MiB':>9} {'fits':>4} {'GFLOP':>8} {'GB':>7} "
           f"{'collectives (count, MiB)':<28} kernels"]
  for r in res["functions"]:
    m, cost = r["memory"], r.get("cost")
    coll = ", ".join(f"{k} {v['count']} {v['bytes'] / MIB:.2f}" for k, v in
                     sorted((r.get("collectives") or {}).items())) or "-"
    lines.append(
        f"{r['function']:<28} {r['compile_seconds']:>9.1f} {_mib(m.get('arguments')):>8} "
        f"{_mib(m.get('outputs')):>8} {_mib(m.get('aliased')):>8} {_mib(m.get('temporaries')):>8} "
        f"{_mib(m.get('code')):>6} {_mib(m.get('total')):>9} {'yes' if r['fits'] else 'NO':>4} "
        f"{cost['flops'] / 1e9 if cost else float('nan'):>8.2f} "
        f"{cost['bytes'] / 1e9 if cost else float('nan'):>7.3f} {coll:<28} "
        f"{r.get('kernels_per_step', '-')}")
  sources = sorted({r["cost_source"] for r in res["functions"] if r.get("cost_source")})
  p = res["projection"]
  lines += ["", "GFLOP and GB: per device and per step (a scanned block's figures are one step's; "
            f"XLA counts a scan body once); from: {'; '.join(sources) or 'none'}",
            f"projection (lower bound): {p['minutes']:.1f} min for the whole run = Σ units × "
            f"max(flops ÷ {p['peak_flops'] / 1e12:.1f} TFLOP/s, bytes ÷ "
            f"{p['bandwidth'] / 1e9:.0f} GB/s) per device ({t['source']})"]
  if p["without_figures"]:
    lines.append(f"  not counted (no figures: did not compile): {', '.join(p['without_figures'])}")
  for row in p["functions"]:
    lines.append(f"  {row['function']:<28} {row['units']:>8} units × {row['unit_ms']:8.3f} ms "
                 f"({row['bound']}-bound) = {row['minutes']:7.2f} min")
  return "\n".join(lines)
