r"""The config × target table of launch/README.md, from rfd_jax.tools.aot's aot.json files.

  python -m rfd_jax.tools.aot.readme_table OUT_DIR [OUT_DIR ...] [--readme launch/README.md]

Each OUT_DIR holds one aot.json (`python -m rfd_jax.tools.aot ... --out OUT_DIR`). Prints the
Markdown table; with --readme, puts it between the `<!-- aot:table:begin -->` and
`<!-- aot:table:end -->` lines of that file (the rest unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

GIB, MIB = 2**30, 2**20
BEGIN, END = "<!-- aot:table:begin -->", "<!-- aot:table:end -->"


def load(directories: list[str]) -> list[dict[str, Any]]:
  out = []
  for d in directories:
    path = os.path.join(d, "aot.json")
    with open(path) as f:
      out.append(json.load(f))
  return out


def row(res: dict[str, Any]) -> str:
  """One table row: the config, the target, whether it fits, its largest function per device,
  the compile time and the projected lower bound."""
  c, t, p = res["config"], res["target"], res["projection"]
  largest = max(res["functions"], key=lambda r: r["memory"]["total"] or 0)
  job = c.get("job", "dfcil")
  name = c["dataset"] + (f" {c['method']}" if job == "dfcil" else f" {job}")
  if c["runs"] > 1:
    name += f", group of {c['runs']} runs"
  sources = {r.get("cost_source") for r in res["functions"]}
  bound = f"{p['minutes']:.1f}" + ("" if sources == {"target compiler"} else " ¹")
  if p.get("without_figures"):
    bound += f" (without {', '.join(p['without_figures'])})"
  compile_min = sum(r["compile_seconds"] for r in res["functions"]) / 60
  return (f"| {name}, {c['model']}, batch {c['batch_size']} | {t['name']} ({t['devices']} × "
          f"{t['chip']}, {t['hosts']} host{'s' if t['hosts'] > 1 else ''}) | "
          f"{'yes' if res['fits'] else '**no**'} | {largest['memory']['total'] / MIB:,.0f} MiB "
          f"({largest['function'].split(':')[0]}) of {t['memory_per_device'] / GIB:.1f} GiB | "
          f"{'resident, ' if res['plan']['resident_data'] else 'host-fed, '}"
          f"{res['plan']['train_loop']} | {compile_min:.1f} | {bound} |")


def table(results: list[dict[str, Any]]) -> str:
  lines = ["| config | target | fits | largest function per device | train data, loop | "
           "compile (min, this machine) | projected lower bound (min) |",
           "|---|---|---|---|---|---|---|"]
  lines += [row(r) for r in results]
  lines.append("")
  lines.append("¹ GPU: XLA reports no cost analysis for GPU programs; the flops and bytes are "
               "XLA:CPU's for the same function on one device (the global batch), divided by the "
               "GPU count.")
  return "\n".join(lines)


def replace_section(path: str, text: str) -> None:
  """Puts `text` between the BEGIN and END lines of the file at `path`."""
  with open(path) as f:
    content = f.read()
  if BEGIN not in content or END not in content:
    raise ValueError(f"{path} has no {BEGIN} ... {END} section")
  head, rest = content.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(path, "w") as f:
    f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("dirs", nargs="+", help="directories holding an aot.json")
  parser.add_argument("--readme", help="Markdown file whose aot:table section is replaced")
  args = parser.parse_args(argv)
  text = table(load(args.dirs))
  print(text)
  if args.readme:
    replace_section(args.readme, text)
    print(f"wrote {args.readme}", file=sys.stderr)


if __name__ == "__main__":
  main()
