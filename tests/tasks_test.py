"""Tests for rfd_jax.methods.tasks: pinned class orders, task splits, label remapping."""

import random

import numpy as np
import pytest

from rfd_jax.methods import tasks


@pytest.mark.parametrize("name, num_classes, first", [
    ("seed0", 100, 23), ("seed1", 100, 53), ("seed2", 100, 0),
    ("imagenet1993", 100, 68), ("seed0", 200, 131)])
def test_named_orders_match_the_published_protocols(name, num_classes, first):
  order = tasks.class_order(name, num_classes)
  assert order[0] == first
  assert sorted(order) == list(range(num_classes))


def test_seed_order_is_python_random_shuffle():
  expected = list(range(100))
  random.seed(1)
  random.shuffle(expected)
  assert tasks.class_order("seed1", 100) == expected


def test_explicit_orders_from_string_and_list():
  assert tasks.class_order("2, 0,1", 3) == [2, 0, 1]
  assert tasks.class_order((1, 0), 2) == [1, 0]
  assert tasks.class_order("identity", 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("spec", ["0,1,2", "0,1,1,2", "banana", "0,1,2,4"])
def test_bad_orders_name_the_field(spec):
  with pytest.raises(ValueError, match="config.data.class_order"):
    tasks.class_order(spec, 4)


@pytest.mark.parametrize("num_classes, num_tasks, split, sizes", [
    (10, 5, "equal", [2] * 5),
    (100, 10, "equal", [10] * 10),
    (10, 6, "rdfcil", [5, 1, 1, 1, 1, 1]),   # RFD's CIFAR-10 config
    (100, 10, "rdfcil", [10] * 10),           # equal when T divides C
    (10, 4, "rdfcil", [4, 2, 2, 2]),
    (10, 1, "equal", [10]),
])
def test_split_sizes(num_classes, num_tasks, split, sizes):
  assert tasks.split_sizes(num_classes, num_tasks, split) == sizes


@pytest.mark.parametrize("num_tasks", [3, 0, 11])
def test_bad_num_tasks_names_the_field(num_tasks):
  with pytest.raises(ValueError, match="config.data.num_tasks"):
    tasks.split_sizes(10, num_tasks, "equal")


def test_task_spec_offsets_and_label_remapping():
  spec = tasks.make_task_spec(num_classes=6, num_tasks=3, order="5,3,1,0,2,4")
  np.testing.assert_array_equal(spec.offsets, [0, 2, 4, 6])
  assert spec.num_seen(0) == 2 and spec.num_seen(2) == 6
  np.testing.assert_array_equal(spec.task_of_label(), [0, 0, 1, 1, 2, 2])
  # original class 5 is model label 0, class 4 is model label 5
  np.testing.assert_array_equal(spec.to_model_labels(np.array([5, 4, 3, 0])), [0, 5, 1, 3])
  np.testing.assert_array_equal(spec.task_classes(1), [2, 3])
  # the remapping is the inverse of the order
  np.testing.assert_array_equal(np.asarray(spec.class_order)[spec.to_model_labels(np.arange(6))],
                                np.arange(6))


def test_seed_orders_pinned_for_seed0_to_2():
  # Fashion-MNIST (10 classes) orders of the README's tables; must never change.
  assert tasks.class_order("seed0", 10) == [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]
  assert tasks.class_order("seed1", 10) == [6, 8, 9, 7, 5, 3, 0, 4, 1, 2]
  assert tasks.class_order("seed2", 10) == [5, 9, 3, 4, 6, 7, 2, 8, 1, 0]


@pytest.mark.parametrize("seed", [3, 7, 12, 1993])
def test_any_seed_order_is_the_random_seed_shuffle(seed):
  state = random.getstate()
  try:
    expected = list(range(100))
    random.seed(seed)
    random.shuffle(expected)  # the ABD / R-DFCIL protocol for repeat `seed`
  finally:
    random.setstate(state)
  assert tasks.class_order(f"seed{seed}", 100) == expected


def test_explicit_orders_in_brackets_and_with_dots():
  assert tasks.class_order("[2,0,1]", 3) == [2, 0, 1]
  assert tasks.class_order("2.0.1", 3) == [2, 0, 1]
  with pytest.raises(ValueError, match="config.data.class_order"):
    tasks.class_order("seed01", 3)
  with pytest.raises(ValueError, match="names several class orders; run them with config.runs"):
    tasks.class_order("seed0-seed2", 3)


def test_order_list_expands_ranges_and_explicit_orders():
  assert tasks.order_list("seed0-seed3,seed7", where="--orders") == [
      "seed0", "seed1", "seed2", "seed3", "seed7"]
  assert tasks.order_list("seed5-seed5, identity,[1, 0,3,2],2.0.1", where="x") == [
      "seed5", "identity", "1.0.3.2", "2.0.1"]
  assert tasks.order_list("imagenet1993", where="x") == ["imagenet1993"]


@pytest.mark.parametrize("text, message", [
    ("seed4-seed2", "runs backwards; write seed2-seed4"),
    ("seed01", "write seed1"),
    ("seed00-seed3", "without leading zeros"),
    ("seedx", "'seedx' is not a class order"),
    ("1,0,2", "in brackets"),
    ("[1,1,0]", "not a permutation"),
    ("[0,2,3]", "not a permutation"),
    ("[a,b]", "lists class ids"),
    ("seed1,seed0-seed2", "seed1 twice"),
    (" , ", "no class orders"),
])
def test_order_list_errors_name_the_flag_and_the_fix(text, message):
  with pytest.raises(ValueError, match="^--orders: .*" + message):
    tasks.order_list(text, where="--orders")


def test_run_names_of_explicit_orders():
  assert tasks.run_name("seed3", 0) == "seed3"
  assert tasks.run_name("seed3", 2) == "seed3-s2"
  assert tasks.run_name("1.0.3.2", 0) == "1.0.3.2"
  long_order = ".".join(map(str, tasks.class_order("seed1", 100)))
  name = tasks.run_name(long_order, 1)
  assert name.startswith("53.37.65.51.4.20.38.9...-") and name.endswith("-s1")
  assert len(name) < 64
  other = ".".join(map(str, tasks.class_order("seed2", 100)))
  assert tasks.order_dir_name(other) != tasks.order_dir_name(long_order)
