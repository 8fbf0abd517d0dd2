"""Tiny-ImageNet, ImageNet-100 and ImageNet-R from the folder layouts users already have on disk.

This module finds the files and their class ids; `image_decode` turns them into images as RFD's
`cl_lite` datasets do (spec §1.2: Resize(r) + CenterCrop(s) on PIL RGB images):
  * tiny_imagenet: r = s = config.data.image_size (64; the images are 64×64 already), decoded once
    into memory by a thread pool (100k + 10k images, 1.2 GB at 64 px);
  * imagenet100, imagenet_r: s = config.data.image_size (224) and r = round(s · 256 / 224) (256),
    decoded lazily (`image_decode.LazyImages`: ImageNet-100 is 19 GB at 224 px).
Normalisation and augmentation happen on the device (rfd_jax.data.augment).

Class ids (the ids that `config.data.class_order` permutes):
  * tiny_imagenet: the line number of the wnid in `wnids.txt`, in file order (not sorted), exactly
    as cl_lite's TinyImageNet200, so that RFD's seed0 order names the same classes;
  * imagenet100: the label column of PODNet's `train_100.txt` / `val_100.txt`;
  * imagenet_r: the `targets` of the CODA-Prompt split files; a split written by this module uses
    the position of the class folder (wnid) in sorted order (torchvision ImageFolder's rule).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

from absl import logging
import numpy as np

from rfd_jax.data import datasets, image_decode

FOLDER_DATASETS = ("tiny_imagenet", "imagenet100", "imagenet_r")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# ImageNet-R without CODA-Prompt's split files: per class, floor(0.8 n) training images (see
# `write_imagenet_r_split`).
IMAGENET_R_TRAIN_FRACTION = 0.8
IMAGENET_R_SPLIT_SEED = 0

TINY_LAYOUT = """\
  <data_dir>/tiny-imagenet-200/        (the official tiny-imagenet-200.zip, extracted)
    wnids.txt                          200 wnids; class id = line number
    train/<wnid>/images/*.JPEG         500 per class
    val/images/*.JPEG                  10,000
    val/val_annotations.txt            "<file>\\t<wnid>\\t..." per line"""

IMAGENET100_LAYOUT = """\
  <data_dir>/imagenet100/              (or <data_dir> itself; R-DFCIL's layout)
    train_100.txt, val_100.txt         PODNet's lists: "<relative/path.JPEG> <label>" per line
    train/..., val/...                 the ImageNet-1k images the lists name, at the paths they
                                       give relative to this folder"""

IMAGENET_R_LAYOUT = """\
  <data_dir>/
    imagenet-r/<wnid>/*.jpg            imagenet-r.tar extracted: 200 class folders, 30,000 images
    imagenet-r_train.yaml              optional: CODA-Prompt's split files, keys `data` (paths)
    imagenet-r_test.yaml               and `targets` (class ids); written here when absent"""


def _missing(what: str, layout: str, dataset: str, *, looked: Sequence[str] = ()) -> str:
  lines = [f"{what}"]
  if looked:
    lines.append("Looked in: " + ", ".join(looked))
  lines += [f"Expected layout for {dataset}:", layout,
            "Fix: pass --config.data.data_dir=/path/to/<data_dir> (nothing is downloaded)."]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Layouts.


def _check_files_exist(paths: Sequence[str], *, what: str, layout: str, dataset: str,
                       num_threads: int) -> None:
  with concurrent.futures.ThreadPoolExecutor(image_decode.resolve_num_threads(num_threads)) as pool:
    exists = list(pool.map(os.path.isfile, paths))
  missing = [p for p, ok in zip(paths, exists) if not ok]
  if missing:
    raise FileNotFoundError(_missing(
        f"{len(missing)} of the {len(paths)} images listed in {what} are missing, e.g. "
        f"{', '.join(missing[:3])}", layout, dataset))


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{what}: class ids must be in [0, {num_classes}); found "
                     f"[{labels.min()}, {labels.max()}]")
  present = len(np.unique(labels))
  if present < num_classes:
    logging.warning("%s has images of only %d of the %d classes", what, present, num_classes)


def _require_data_dir(data_dir: str, dataset: str, layout: str) -> str:
  if not data_dir:
    raise FileNotFoundError(_missing(
        f"config.data.data_dir is empty; {dataset} is read from a folder.", layout, dataset))
  return os.path.expanduser(data_dir)


def tiny_imagenet_files(data_dir: str) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
  """Paths and class ids of the official Tiny-ImageNet layout: (train, labels, val, labels).

  The root is the first of `<data_dir>/tiny-imagenet-200`, `<data_dir>/tiny-imagenet200` (cl_lite)
  and `<data_dir>` that holds wnids.txt. Train files are sorted per class; val follows
  val_annotations.txt. Labels are int64 line numbers of the wnids in wnids.txt.
  """
  data_dir = _require_data_dir(data_dir, "tiny_imagenet", TINY_LAYOUT)
  candidates = [os.path.join(data_dir, d) for d in ("tiny-imagenet-200", "tiny-imagenet200", "")]
  root = next((c for c in candidates if os.path.isfile(os.path.join(c, "wnids.txt"))), None)
  if root is None:
    raise FileNotFoundError(_missing("Tiny-ImageNet not found: no wnids.txt.", TINY_LAYOUT,
                                     "tiny_imagenet", looked=candidates))
  with open(os.path.join(root, "wnids.txt")) as f:
    wnids = [line.strip() for line in f if line.strip()]
  class_of = {wnid: i for i, wnid in enumerate(wnids)}

  train_paths, train_labels, missing_dirs = [], [], []
  for wnid in wnids:
    image_dir = os.path.join(root, "train", wnid, "images")
    if not os.path.isdir(image_dir):
      missing_dirs.append(image_dir)
      continue
    files = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    train_paths += [os.path.join(image_dir, f) for f in files]
    train_labels += [class_of[wnid]] * len(files)
  annotations = os.path.join(root, "val", "val_annotations.txt")
  if not os.path.isfile(annotations):
    missing_dirs.append(annotations)
  if missing_dirs:
    raise FileNotFoundError(_missing(
        f"Tiny-ImageNet at {root} is incomplete: {len(missing_dirs)} missing, e.g. "
        f"{', '.join(missing_dirs[:3])}", TINY_LAYOUT, "tiny_imagenet"))

  val_dir = os.path.join(root, "val", "images")
  val_paths, val_labels = [], []
  with open(annotations) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) < 2 or fields[1].strip() not in class_of:
        raise ValueError(f"{annotations}:{line_no}: expected '<file>\\t<wnid from wnids.txt>...', "
                         f"got {line.strip()!r}")
      val_paths.append(os.path.join(val_dir, fields[0].strip()))
      val_labels.append(class_of[fields[1].strip()])
  present = set(os.listdir(val_dir)) if os.path.isdir(val_dir) else set()
  missing = [p for p in val_paths if os.path.basename(p) not in present]
  if missing:
    raise FileNotFoundError(_missing(
        f"{len(missing)} of the {len(val_paths)} images listed in {annotations} are missing, "
        f"e.g. {', '.join(missing[:3])}", TINY_LAYOUT, "tiny_imagenet"))
  return (train_paths, np.asarray(train_labels, np.int64), val_paths,
          np.asarray(val_labels, np.int64))


def _read_list_file(path: str, root: str) -> tuple[list[str], np.ndarray]:
  """PODNet list file: "relative/path.JPEG label" per line → (absolute paths, int64 labels)."""
  paths, labels = [], []
  with open(path) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      fields = line.strip().rsplit(maxsplit=1)
      try:
        labels.append(int(fields[1]))
      except (IndexError, ValueError):
        raise ValueError(f"{path}:{line_no}: expected '<relative/path> <label>', got "
                         f"{line.strip()!r}") from None
      paths.append(os.path.join(root, fields[0]))
  return paths, np.asarray(labels, np.int64)


def imagenet100_files(data_dir: str, *, num_threads: int = 0
                      ) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
  """Paths and labels from PODNet's train_100.txt / val_100.txt under `<data_dir>/imagenet100`
  (R-DFCIL's layout) or `<data_dir>`; list paths are relative to the folder holding the lists."""
  data_dir = _require_data_dir(data_dir, "imagenet100", IMAGENET100_LAYOUT)
  candidates = [os.path.join(data_dir, "imagenet100"), data_dir]
  root = next((c for c in candidates if os.path.isfile(os.path.join(c, "train_100.txt"))), None)
  if root is None or not os.path.isfile(os.path.join(root, "val_100.txt")):
    raise FileNotFoundError(_missing("ImageNet-100 list files train_100.txt / val_100.txt not "
                                     "found.", IMAGENET100_LAYOUT, "imagenet100",
                                     looked=candidates))
  splits = []
  for name in ("train_100.txt", "val_100.txt"):
    paths, labels = _read_list_file(os.path.join(root, name), root)
    _check_files_exist(paths, what=os.path.join(root, name), layout=IMAGENET100_LAYOUT,
                       dataset="imagenet100", num_threads=num_threads)
    splits += [paths, labels]
  return tuple(splits)


def _load_yaml(path: str) -> dict:
  import yaml  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _resolve_imagenet_r_path(entry: str, data_dir: str) -> str:
  """A split-file entry as a file: `<data_dir>/<entry>`, else the part after "imagenet-r/" under
  `<data_dir>/imagenet-r/`, else `<data_dir>/imagenet-r/<wnid>/<file>` (CODA-Prompt's own copy
  files them under train/ or test/ folders that do not match its split)."""
  if os.path.isabs(entry):
    return entry
  direct = os.path.join(data_dir, entry)
  if os.path.isfile(direct):
    return direct
  parts = entry.replace("\\", "/").split("/")
  if "imagenet-r" in parts:
    last = len(parts) - 1 - parts[::-1].index("imagenet-r")
    candidate = os.path.join(data_dir, "imagenet-r", *parts[last + 1:])
    if os.path.isfile(candidate):
      return candidate
  return os.path.join(data_dir, "imagenet-r", *parts[-2:])


def write_imagenet_r_split(data_dir: str) -> tuple[dict, dict]:
  """Creates a deterministic 80/20 split of `<data_dir>/imagenet-r/<wnid>/*` in CODA-Prompt's format.

  Rule: class id = index of the wnid folder in sorted order; per class, the image files (.jpg,
  .jpeg, .png, any case) sorted by name are permuted by
  `np.random.default_rng([IMAGENET_R_SPLIT_SEED, class_id]).permutation(n)`; the first
  floor(0.8 n) go to train, the rest to test; each split lists classes in order and files sorted.
  Entries are `imagenet-r/<wnid>/<file>`. The splits are written to
  `<data_dir>/imagenet-r_{train,test}.yaml` when the folder is writable (else only logged).

  Returns the (train, test) dicts with keys "data" and "targets".
  """
  image_root = os.path.join(data_dir, "imagenet-r")
  if not os.path.isdir(image_root):
    raise FileNotFoundError(_missing(
        f"ImageNet-R not found: no split files {data_dir}/imagenet-r_{{train,test}}.yaml and no "
        f"image folder {image_root}.", IMAGENET_R_LAYOUT, "imagenet_r"))
  wnids = sorted(d for d in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, d)))
  if not wnids:
    raise FileNotFoundError(_missing(f"ImageNet-R folder {image_root} has no class folders.",
                                     IMAGENET_R_LAYOUT, "imagenet_r"))
  splits = {"train": {"data": [], "targets": []}, "test": {"data": [], "targets": []}}
  for label, wnid in enumerate(wnids):
    files = sorted(f for f in os.listdir(os.path.join(image_root, wnid))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    perm = np.random.default_rng([IMAGENET_R_SPLIT_SEED, label]).permutation(len(files))
    num_train = int(np.floor(IMAGENET_R_TRAIN_FRACTION * len(files)))
    for split, chosen in (("train", perm[:num_train]), ("test", perm[num_train:])):
      for i in sorted(chosen):
        splits[split]["data"].append(f"imagenet-r/{wnid}/{files[i]}")
        splits[split]["targets"].append(label)
  import yaml  # pylint: disable=g-import-not-at-top
  try:
    for split, content in splits.items():
      path = os.path.join(data_dir, f"imagenet-r_{split}.yaml")
      with open(path + ".tmp", "w") as f:
        yaml.safe_dump(content, f, default_flow_style=False)
      os.replace(path + ".tmp", path)
    logging.info("wrote the ImageNet-R 80/20 split to %s/imagenet-r_{train,test}.yaml", data_dir)
  except OSError as e:
    logging.warning("could not write the ImageNet-R split next to the data (%s); using it "
                    "in memory only", e)
  return splits["train"], splits["test"]


def imagenet_r_files(data_dir: str, *, num_threads: int = 0
                     ) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
  """Paths and labels of ImageNet-R from CODA-Prompt's split files, or a split written now."""
  data_dir = _require_data_dir(data_dir, "imagenet_r", IMAGENET_R_LAYOUT)
  split_files = [os.path.join(data_dir, f"imagenet-r_{s}.yaml") for s in ("train", "test")]
  present = [os.path.isfile(p) for p in split_files]
  if all(present):
    contents = [_load_yaml(p) for p in split_files]
  elif any(present):
    raise FileNotFoundError(_missing(
        f"Only one ImageNet-R split file exists: {split_files[present.index(True)]}; add the "
        "other, or remove it to have a split written.", IMAGENET_R_LAYOUT, "imagenet_r"))
  else:
    contents = write_imagenet_r_split(data_dir)
  out = []
  for path, content in zip(split_files, contents):
    if not isinstance(content, dict) or "data" not in content or "targets" not in content or (
        len(content["data"]) != len(content["targets"])):
      raise ValueError(f"{path}: expected keys 'data' (paths) and 'targets' (class ids) of equal "
                       "length (CODA-Prompt's split format)")
    paths = [_resolve_imagenet_r_path(str(e), data_dir) for e in content["data"]]
    _check_files_exist(paths, what=path, layout=IMAGENET_R_LAYOUT, dataset="imagenet_r",
                       num_threads=num_threads)
    out += [paths, np.asarray(content["targets"], np.int64)]
  return tuple(out)


# ---------------------------------------------------------------------------------------------
# Entry point.


def load(data_config) -> datasets.Dataset:
  """Loads a folder dataset: Tiny-ImageNet into memory, the ImageNet sets as `LazyImages`.

  Reads `dataset`, `data_dir`, `image_size` and, if present, `decode_threads` (0: one per core,
  at most 32) and `cache_gb` (decoded-image LRU per split of the lazy sets).

  Raises:
    FileNotFoundError: files missing; the message shows the expected layout and the flag to set.
    ValueError: a malformed list/split file or class ids out of range.
  """
  name = data_config.dataset
  info = datasets.dataset_info(name)
  threads = int(data_config.get("decode_threads", 0))
  crop = int(data_config.image_size)
  resize = image_decode.resize_size_for(name, crop)
  if name == "tiny_imagenet":
    tr_paths, tr_y, te_paths, te_y = tiny_imagenet_files(data_config.data_dir)
  elif name == "imagenet100":
    tr_paths, tr_y, te_paths, te_y = imagenet100_files(data_config.data_dir, num_threads=threads)
  elif name == "imagenet_r":
    tr_paths, tr_y, te_paths, te_y = imagenet_r_files(data_config.data_dir, num_threads=threads)
  else:
    raise ValueError(f"config.data.dataset={name!r} is not a folder dataset {FOLDER_DATASETS}")
  _check_labels(tr_y, info.num_classes, f"{name} train split")
  _check_labels(te_y, info.num_classes, f"{name} test split")
  logging.info("%s: %d train / %d test images, Resize(%d) + CenterCrop(%d)", name, len(tr_paths),
               len(te_paths), resize, crop)

  if name == "tiny_imagenet":
    tr_x = image_decode.decode_all(tr_paths, resize=resize, crop=crop, num_threads=threads,
                                   what="train images")
    te_x = image_decode.decode_all(te_paths, resize=resize, crop=crop, num_threads=threads,
                                   what="test images")
  else:
    cache_bytes = int(float(data_config.get("cache_gb", image_decode.DEFAULT_CACHE_GB)) * 2**30)
    tr_x = image_decode.LazyImages(tr_paths, resize=resize, crop=crop, num_threads=threads,
                                   cache_bytes=cache_bytes, name=f"{name}-train")
    te_x = image_decode.LazyImages(te_paths, resize=resize, crop=crop, num_threads=threads,
                                   cache_bytes=cache_bytes, name=f"{name}-test")
  return datasets.Dataset(name, tr_x, tr_y, te_x, te_y, np.asarray(info.mean, np.float32),
                          np.asarray(info.std, np.float32))
