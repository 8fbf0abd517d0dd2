"""MetricWriter: metrics.jsonl and TensorBoard event files (read back without TensorBoard)."""

import glob
import json
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from rfd_jax.engine import writers


def read_events(workdir):
  """Every Event of the workdir's event files: TFRecord framing (u64 length, u32 crc, payload,
  u32 crc), parsed with tensorboardX's own protos."""
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def scalars(events):
  """{tag: [(step, value), ...]} of the simple-value summaries."""
  out = {}
  for event in events:
    for value in event.summary.value:
      if value.WhichOneof("value") == "simple_value":
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_writes_jsonl_and_prefixed_scalars_to_tensorboard(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), hparams={"optim": {"lr": 0.1, "milestones": (1, 2)},
                                                        "method": "abd"})
  writer.write(10, {"task": 0, "epoch": 1, "phase": "main", "train/lr": 0.05,
                    "train/loss_ce": np.float32(1.5), "train/acc": np.array(0.25)})
  writer.write(20, {"task": 1, "iteration": 5, "inversion/loss_bn": 0.125, "ok": True})
  writer.close()

  with open(tmp_path / "metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  assert lines == [
      {"step": 10, "task": 0, "epoch": 1, "phase": "main", "train/lr": 0.05,
       "train/loss_ce": 1.5, "train/acc": 0.25},
      {"step": 20, "task": 1, "iteration": 5, "inversion/loss_bn": 0.125, "ok": True}]
  events = read_events(str(tmp_path))
  assert scalars(events) == {"train/lr": [(10, 0.05000000074505806)], "train/loss_ce": [(10, 1.5)],
                             "train/acc": [(10, 0.25)], "inversion/loss_bn": [(20, 0.125)]}
  hparam_tags = [v.tag for e in events for v in e.summary.value if v.tag.startswith("_hparams_/")]
  assert hparam_tags == ["_hparams_/experiment", "_hparams_/session_start_info",
                         "_hparams_/session_end_info"]  # once
  start = next(v for e in events for v in e.summary.value
               if v.tag == "_hparams_/session_start_info")
  assert b"optim.milestones" in start.metadata.plugin_data.content
  assert b"(1, 2)" in start.metadata.plugin_data.content


def test_disabled_writer_writes_nothing(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), enabled=False, hparams={"a": 1})
  writer.write(1, {"train/loss": 1.0})
  writer.close()
  assert os.listdir(tmp_path) == []


def test_flatten_config():
  assert writers.flatten_config({"a": {"b": 1, "c": {"d": None}}, "e": (1, 2), "f": "x"}) == {
      "a.b": 1, "a.c.d": "None", "e": "(1, 2)", "f": "x"}
  # json_values: as read back from config.json, for comparing configs (checkpointing)
  assert writers.flatten_config({"a": {"b": 1, "c": {"d": None}}, "e": (1, 2), "f": "x"},
                                json_values=True) == {"a.b": 1, "a.c.d": None, "e": [1, 2],
                                                      "f": "x"}


def test_keep_records_drops_the_records_past_the_resumed_state(tmp_path):
  writer = writers.MetricWriter(str(tmp_path), keep_records=0)
  for step in range(4):
    writer.write(step, {"train/loss": float(step)})
  assert writer.records == 4
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "train/lo')  # a writer killed mid-line
  # a resume from the state after 2 records: records 3 and 4 (and the partial line) are dropped
  writer = writers.MetricWriter(str(tmp_path), keep_records=2)
  assert writer.records == 2
  writer.write(2, {"train/loss": 2.5})
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == [
        {"step": 0, "train/loss": 0.0}, {"step": 1, "train/loss": 1.0},
        {"step": 2, "train/loss": 2.5}]
  assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")
  # None (no checkpointing, or a checkpoint from before records were counted): appends
  writer = writers.MetricWriter(str(tmp_path))
  assert writer.records == 3
  writer.close()
  # more records wanted than the file has (it was cut by hand): all kept
  writer = writers.MetricWriter(str(tmp_path), keep_records=10)
  assert writer.records == 3
  writer.close()
