"""Test helpers: tiny fake Tiny-ImageNet, ImageNet-100 and ImageNet-R folders written with Pillow."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def color(class_id: int, k: int) -> tuple[int, int, int]:
  """The solid colour of image k of a class (distinct per image, far from JPEG rounding)."""
  return (20 * (class_id % 12) + 10, 30 * k + 10, 200 - 10 * (class_id % 12))


def write_image(path, size: tuple[int, int], rgb, *, mode: str = "RGB") -> None:
  """A solid-colour image of size (width, height); format from the extension."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.new("RGB", size, tuple(rgb))
  if mode != "RGB":
    img = img.convert(mode)
  img.save(path, format="JPEG" if path.lower().endswith((".jpeg", ".jpg")) else "PNG",
           quality=95)


def make_tiny_imagenet(data_dir, wnids=("n03", "n01", "n02"), *, per_class: int = 3,
                       val_per_class: int = 2, size: int = 20) -> str:
  """<data_dir>/tiny-imagenet-200 with `wnids` (in that file order); one grey train image."""
  root = os.path.join(data_dir, "tiny-imagenet-200")
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "wnids.txt"), "w") as f:
    f.write("".join(f"{w}\n" for w in wnids))
  lines = []
  for c, wnid in enumerate(wnids):
    for k in range(per_class):
      write_image(os.path.join(root, "train", wnid, "images", f"{wnid}_{k}.JPEG"), (size, size),
                  color(c, k), mode="L" if (c, k) == (0, 0) else "RGB")
    for k in range(val_per_class):
      name = f"val_{c * val_per_class + k}.JPEG"
      write_image(os.path.join(root, "val", "images", name), (size, size), color(c, k))
      lines.append(f"{name}\t{wnid}\t0\t0\t{size}\t{size}\n")
  with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
    f.write("".join(lines))
  return root


def make_imagenet100(data_dir, labels=(0, 1, 2), *, per_class: int = 3, val_per_class: int = 1,
                     size: tuple[int, int] = (40, 30)) -> str:
  """<data_dir>/imagenet100 with PODNet-style train_100.txt / val_100.txt over train/ and val/."""
  root = os.path.join(data_dir, "imagenet100")
  for split, count, list_name in (("train", per_class, "train_100.txt"),
                                  ("val", val_per_class, "val_100.txt")):
    lines = []
    for label in labels:
      wnid = f"n{label:08d}"
      for k in range(count):
        rel = f"{split}/{wnid}/{wnid}_{k}.JPEG"
        write_image(os.path.join(root, rel), size, color(label, k))
        lines.append(f"{rel} {label}\n")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, list_name), "w") as f:
      f.write("".join(lines))
  return root


def make_imagenet_r(data_dir, wnids=("n02", "n01", "n03"), *, per_class: int = 5,
                    size: tuple[int, int] = (30, 40)) -> str:
  """<data_dir>/imagenet-r/<wnid>/<style>_<k>.jpg, no split files."""
  root = os.path.join(data_dir, "imagenet-r")
  for wnid in wnids:
    c = sorted(wnids).index(wnid)
    for k in range(per_class):
      write_image(os.path.join(root, wnid, f"art_{k}.jpg"), size, color(c, k))
  return root


def mean_color(image: np.ndarray) -> np.ndarray:
  return image.reshape(-1, 3).mean(0)
