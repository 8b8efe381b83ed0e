"""W&B logging, offline: the run folder holds the losses by iteration, checkpoint FIDs, final
metrics, the config and the pictures; online without a key is a clear error."""
import struct
from pathlib import Path

import pytest
from PIL import Image

from components.config import ConfigError, TrackingConfig
from components.tracking import log_run


def read_wandb_records(path: Path) -> list:
    """Records of a .wandb file (LevelDB-log framing: 32 KiB blocks of 7-byte-headed chunks)."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:               # too little room for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                        # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
            pending = b""
    return records


def test_offline_run_holds_history_metrics_config_and_pictures(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    history = [{"iteration": 50, "loss_dm": 0.5, "loss_fake": 0.2}, {"iteration": 100, "loss_dm": 0.4, "fid": 12.5}]
    folder = log_run(TrackingConfig(dir=str(tmp_path)), "run-1", "dmd2", {"distill": {"iterations": 100}}, history,
                     {"student_fid": 12.0, "teacher_fid": 10.0, "feature_net": "x", "nan": float("nan")},
                     {"student": Image.new("RGB", (16, 16), "red")}, "<h1>report</h1>")
    assert folder.parent == tmp_path / "wandb" and folder.name.startswith("offline-run-")
    assert list((folder / "files" / "media" / "images").glob("samples/student_*.png"))
    records = read_wandb_records(next(folder.glob("run-*.wandb")))
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.nested_key[0] if i.nested_key else i.key: i.value_json for i in r.history.item}
            steps[int(items["_step"])] = items
    kinds = [r.WhichOneof("record_type") for r in records]
    assert set(steps) == {50, 100}, f"history steps {sorted(steps)} in records {kinds}"
    assert float(steps[50]["distill/loss_dm"]) == 0.5 and float(steps[100]["distill/fid"]) == 12.5
    assert float(steps[100]["distill/loss_dm"]) == 0.4 and any(k.startswith("samples/") for k in steps[100])
    summary = {(i.nested_key[0] if i.nested_key else i.key): i.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert float(summary["eval/student_fid"]) == 12.0 and "eval/nan" not in summary
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.display_name == "run-1" and run.run_group == "dmd2"
    assert any(i.key == "distill" and "iterations" in i.value_json for i in run.config.update)


def test_disabled_writes_nothing_and_online_needs_a_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert log_run(TrackingConfig(dir=str(tmp_path)), "r", "g", {}, [], {}, {}) is None
    assert not (tmp_path / "wandb").exists()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        log_run(TrackingConfig(dir=str(tmp_path)), "r", "g", {}, [], {}, {})
