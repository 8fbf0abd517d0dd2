"""Tests for rfd_jax.data.image_folders and image_decode: layouts, LazyImages, geometry, errors."""

import os

import chex
import ml_collections
import numpy as np
import pytest
import yaml
from PIL import Image

from rfd_jax.data import image_decode, sources

from fake_folders import color, make_imagenet100, make_imagenet_r, make_tiny_imagenet, mean_color


def _cfg(dataset, data_dir, image_size=16, **extra):
  return ml_collections.ConfigDict({"dataset": dataset, "data_dir": str(data_dir),
                                    "image_size": image_size, "decode_threads": 2, **extra})


# ---- Tiny-ImageNet.

def test_tiny_imagenet_layout_labels_and_pixels(tmp_path):
  make_tiny_imagenet(tmp_path)
  data = sources.load_dataset(_cfg("tiny_imagenet", tmp_path))
  chex.assert_shape([data.train_images, data.test_images], [(9, 16, 16, 3), (6, 16, 16, 3)])
  chex.assert_type([data.train_images, data.train_labels], [np.uint8, np.int64])
  assert isinstance(data.train_images, np.ndarray)  # small: decoded into memory
  # class id = line of the wnid in wnids.txt (n03, n01, n02), not sorted order
  np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(data.test_labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_allclose(mean_color(data.train_images[4]), color(1, 1), atol=3)
  np.testing.assert_allclose(mean_color(data.test_images[5]), color(2, 1), atol=3)
  grey = data.train_images[0]  # a mode-L file becomes RGB with equal channels
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_allclose(data.mean, [0.4803, 0.4481, 0.3976])
  assert data.num_classes == 200
  again = sources.load_dataset(_cfg("tiny_imagenet", tmp_path))
  np.testing.assert_array_equal(again.train_images, data.train_images)


def test_tiny_imagenet_missing_files_show_layout_and_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.data_dir") as e:
    sources.load_dataset(_cfg("tiny_imagenet", ""))
  with pytest.raises(FileNotFoundError, match="no wnids.txt") as e:
    sources.load_dataset(_cfg("tiny_imagenet", tmp_path))
  message = str(e.value)
  assert "train/<wnid>/images/*.JPEG" in message and "val/val_annotations.txt" in message
  assert "--config.data.data_dir=" in message and str(tmp_path / "tiny-imagenet-200") in message
  root = make_tiny_imagenet(tmp_path)
  os.remove(os.path.join(root, "val", "images", "val_3.JPEG"))
  with pytest.raises(FileNotFoundError, match="1 of the 6 images listed.*val_3.JPEG"):
    sources.load_dataset(_cfg("tiny_imagenet", tmp_path))


# ---- ImageNet-100.

def test_imagenet100_list_files_and_lazy_images(tmp_path):
  make_imagenet100(tmp_path, labels=(5, 7, 99))
  data = sources.load_dataset(_cfg("imagenet100", tmp_path, cache_gb=1e-6))
  images = data.train_images
  assert isinstance(images, image_decode.LazyImages)
  assert len(images) == 9 and images.shape == (9, 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(data.train_labels, [5, 5, 5, 7, 7, 7, 99, 99, 99])
  np.testing.assert_array_equal(data.test_labels, [5, 7, 99])
  np.testing.assert_allclose(data.std, [0.229, 0.224, 0.225])

  # the indexing forms train.py uses, all deterministic
  batch = images[np.array([4, 0, 4, 8])]
  chex.assert_shape(batch, (4, 16, 16, 3))
  chex.assert_type(batch, np.uint8)
  np.testing.assert_array_equal(batch[0], batch[2])
  np.testing.assert_allclose(mean_color(batch[0]), color(7, 1), atol=3)
  np.testing.assert_array_equal(images[-1], images[8])
  np.testing.assert_array_equal(images[2:4], images[np.array([2, 3])])
  chex.assert_shape(images[np.arange(6).reshape(2, 3)], (2, 3, 16, 16, 3))
  seen = data.test_labels < 50
  np.testing.assert_array_equal(data.test_images[seen], data.test_images[np.array([0, 1])])
  full = np.asarray(images)
  for idx in (np.array([3, 1]), np.array([8, 7, 6, 5])):  # the cache holds < 1 image here
    np.testing.assert_array_equal(images[idx], full[idx])
  with pytest.raises(IndexError):
    images[np.array([9])]

  fresh = image_decode.LazyImages(images.paths, resize=18, crop=16, num_threads=2)
  batches = [np.array([0, 1]), np.array([5, 2]), np.array([8, 8]), np.array([3, 4])]
  for got, idx in zip(image_decode.prefetch_rows(fresh, batches, depth=2), batches, strict=True):
    np.testing.assert_array_equal(got, full[idx])
  assert [b.shape for b in image_decode.prefetch_rows(full, batches)] == [(2, 16, 16, 3)] * 4
  fresh.close()


def test_imagenet100_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="train_100.txt") as e:
    sources.load_dataset(_cfg("imagenet100", tmp_path))
  assert "imagenet100/" in str(e.value) and "--config.data.data_dir=" in str(e.value)
  root = make_imagenet100(tmp_path)
  os.remove(os.path.join(root, "train", "n00000001", "n00000001_2.JPEG"))
  with pytest.raises(FileNotFoundError, match="1 of the 9 images listed in .*train_100.txt"):
    sources.load_dataset(_cfg("imagenet100", tmp_path))


def test_imagenet100_label_out_of_range(tmp_path):
  make_imagenet100(tmp_path, labels=(0, 100))
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 100\)"):
    sources.load_dataset(_cfg("imagenet100", tmp_path))


def test_resize_256_center_crop_224_geometry(tmp_path):
  """torchvision Resize(256) (shorter side, long = int(256·long/short)) + CenterCrop(224)."""
  rng = np.random.default_rng(0)
  for width, height, resized, (top, left) in (
      (500, 375, (341, 256), (16, 58)),   # landscape: left = round(58.5) = 58 (half to even)
      (300, 401, (256, 342), (59, 16))):  # portrait: top = round(59.0)
    path = str(tmp_path / f"{width}x{height}.png")
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    got = image_decode.load_image(path, resize=256, crop=224)
    chex.assert_shape(got, (224, 224, 3))
    expected = np.asarray(Image.fromarray(pixels).resize(resized, Image.BILINEAR))
    np.testing.assert_array_equal(got, expected[top:top + 224, left:left + 224])
  assert image_decode.resize_size_for("imagenet100", 224) == 256
  assert image_decode.resize_size_for("tiny_imagenet", 64) == 64


# ---- ImageNet-R.

def test_imagenet_r_writes_a_deterministic_split(tmp_path):
  make_imagenet_r(tmp_path, per_class=5)
  data = sources.load_dataset(_cfg("imagenet_r", tmp_path))
  assert len(data.train_images) == 12 and len(data.test_images) == 3  # floor(0.8·5) = 4 per class
  np.testing.assert_array_equal(data.train_labels, np.repeat([0, 1, 2], 4))  # sorted wnids
  np.testing.assert_array_equal(data.test_labels, [0, 1, 2])
  with open(tmp_path / "imagenet-r_train.yaml") as f:
    written = yaml.safe_load(f)
  assert written["targets"] == [0] * 4 + [1] * 4 + [2] * 4
  assert written["data"][0].startswith("imagenet-r/n01/art_")
  with open(tmp_path / "imagenet-r_test.yaml") as f:
    test_split = yaml.safe_load(f)
  for c, wnid in enumerate(("n01", "n02", "n03")):  # the documented rule, recomputed
    perm = np.random.default_rng([0, c]).permutation(5)
    assert test_split["data"][c] == f"imagenet-r/{wnid}/art_{perm[4]}.jpg"
  # a second load reads the files and sees the same images
  again = sources.load_dataset(_cfg("imagenet_r", tmp_path))
  assert again.train_images.paths == data.train_images.paths
  np.testing.assert_array_equal(again.test_images[np.arange(3)], data.test_images[np.arange(3)])


def test_imagenet_r_reads_coda_prompt_split_files(tmp_path):
  make_imagenet_r(tmp_path, per_class=2)
  # CODA-Prompt's entries ("data/imagenet-r/<train|test>/<wnid>/<file>") resolve to the
  # extracted tar's <data_dir>/imagenet-r/<wnid>/<file>
  train = {"data": ["data/imagenet-r/test/n03/art_1.jpg", "data/imagenet-r/train/n01/art_0.jpg"],
           "targets": [2, 0]}
  test = {"data": ["imagenet-r/n02/art_0.jpg"], "targets": [1]}
  for name, content in (("train", train), ("test", test)):
    with open(tmp_path / f"imagenet-r_{name}.yaml", "w") as f:
      yaml.safe_dump(content, f)
  data = sources.load_dataset(_cfg("imagenet_r", tmp_path))
  np.testing.assert_array_equal(data.train_labels, [2, 0])
  assert data.train_images.paths[0] == os.path.join(tmp_path, "imagenet-r", "n03", "art_1.jpg")
  np.testing.assert_allclose(mean_color(data.train_images[0]), color(2, 1), atol=3)
  np.testing.assert_allclose(mean_color(data.test_images[0]), color(1, 0), atol=3)


def test_imagenet_r_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="imagenet-r_train.yaml") as e:
    sources.load_dataset(_cfg("imagenet_r", tmp_path))
  assert "imagenet-r/<wnid>/*.jpg" in str(e.value)
  with open(tmp_path / "imagenet-r_train.yaml", "w") as f:
    yaml.safe_dump({"data": [], "targets": []}, f)
  with pytest.raises(FileNotFoundError, match="Only one ImageNet-R split file"):
    sources.load_dataset(_cfg("imagenet_r", tmp_path))
  with open(tmp_path / "imagenet-r_test.yaml", "w") as f:
    yaml.safe_dump({"data": ["imagenet-r/n01/art_9.jpg"], "targets": [0]}, f)
  with pytest.raises(FileNotFoundError, match="1 of the 1 images listed"):
    sources.load_dataset(_cfg("imagenet_r", tmp_path))
