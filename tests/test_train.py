"""The Hydra CLI ``hcl-train``: the real config, composed with overrides for tiny CPU runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import MissingConfigException

from hcl_lightning.config import ConfigError, validate_config
from hcl_lightning.train import train
from tests.helpers import compose_config, read_csv, run_cli, tiny_overrides

#: The online probes' val/knn_top1 within a 2-step run: probe steps 1 and 2, validation at 2.
VALIDATE = ("callbacks.online_probes.every_n_steps=1", "+trainer.val_check_interval=2")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is generated in the home directory."""
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))


def test_default_config_composes(tmp_path: Path) -> None:
    cfg = compose_config([])
    assert cfg.model._target_ == "hcl_lightning.baselines.HCLMoCoV2"
    assert (cfg.model.backbone, cfg.model.small_input) == ("resnet18", False)  # preset=demo
    assert (cfg.model.queue_size, cfg.hcl.queue_size, cfg.trainer.max_steps) == (256, 256, 250)
    assert cfg.model.hcl_lambda == cfg.hcl.lam == 0.1
    assert (cfg.hcl.tau, cfg.hcl.c, cfg.hcl.head) == (0.2, 0.05, "shared")
    assert cfg.model.batch_size == cfg.data.batch_size
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.ckpt_path is None
    assert Path(cfg.data.synthetic.root).is_relative_to(tmp_path / "cache")
    paper = compose_config(["preset=paper"])
    assert (paper.model.backbone, paper.model.small_input) == ("resnet50", False)
    assert paper.model.queue_size == paper.hcl.queue_size == 65536
    validate_config(cfg)


def test_train_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = [*tiny_overrides(tmp_path), "callbacks.hyperbolic_monitor.every_n_steps=2"]
    cfg = compose_config([*overrides, *VALIDATE, f"output_dir={tmp_path / 'run'}"])
    summary = train(cfg)

    # the pairing of the monitor's last step, read against chance and the class ceiling
    pairing = summary["pairing"]
    assert pairing["step"] == 2 and pairing["chance_loss"] == pytest.approx(math.log(17))
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "pairing at step 2" in line)
    assert f"L_hyp {pairing['loss']:.2f}" in line and "chance 2.83 / 0.059" in line
    assert "class-level ceiling" in line and "intends" not in printed

    for key in ("loss_euc", "loss_hyp", "hyp_acc1", "norm_scene", "norm_object", "loss_total"):
        assert math.isfinite(summary[key]), key
    assert summary["objective"] == summary["val_knn_top1"]  # objective: val/knn_top1
    assert summary["global_step"] == 2
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.is_absolute() and checkpoint.is_file()
    assert checkpoint.is_relative_to(tmp_path / "run")
    assert (Path(summary["log_dir"]) / "metrics.csv").is_file()
    assert (tmp_path / "synthetic" / "annotations.json").is_file()
    assert cfg.data.image_dir is None  # the caller's config is left as it was


def test_objective_and_its_direction(tmp_path: Path) -> None:
    for objective, mode, direction in (
        ("val/knn_top1", "max", "maximize"),  # the default
        ("val/linear_top1", "max", "maximize"),
        ("train/loss_total", "min", "minimize"),
    ):
        overrides = [f"objective={objective}", "hydra/sweeper=optuna_objective"]
        with initialize_config_module(config_module="hcl_lightning.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
        assert cfg.objective_mode == cfg.callbacks.model_checkpoint.mode == mode
        assert cfg.hydra.sweeper.direction == direction
    assert compose_config([]).objective == "val/knn_top1"


def last_logged(metrics_csv: Path, key: str) -> float:
    return [float(row[key]) for row in read_csv(metrics_csv) if row.get(key)][-1]


def test_multirun_jobs_have_own_directories(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hcl.lam=0,0.1",
        "hcl.tau=0.1,0.2",
        *tiny_overrides(tmp_path),
        f"hydra.sweep.dir={sweep}",
        *VALIDATE,
        "+hydra.callbacks.record._target_=tests.helpers.RecordReturnValue",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr and "Tip:" not in result.stdout  # quiet start-up
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 4
    assert sorted(p.name.split("_", 1)[0] for p in jobs) == ["0", "1", "2", "3"]
    swept = {  # hcl.* overrides come first in the directory names
        tuple(
            item
            for item in p.name.split("_", 1)[1].split(",")[:3]
            if item.startswith(("hcl.lam", "hcl.tau"))
        )
        for p in jobs
    }
    assert swept == {(f"hcl.lam={lam}", f"hcl.tau={tau}") for lam in (0, 0.1) for tau in (0.1, 0.2)}
    for job in jobs:
        # one full checkpoint per save point: last.ckpt links to it
        (saved,) = (p for p in (job / "checkpoints").iterdir() if not p.is_symlink())
        last = job / "checkpoints" / "last.ckpt"
        assert last.is_symlink() and last.resolve() == saved.resolve(), job
        assert (job / "csv" / "metrics.csv").is_file(), job
        # the sweeper gets the job's validation kNN accuracy (objective: val/knn_top1)
        returned = float((job / "return_value.txt").read_text())
        assert returned == pytest.approx(last_logged(job / "csv" / "metrics.csv", "val/knn_top1"))
        log = (job / "train.log").read_text()  # the run's log, timestamped
        assert "hcl-train: 2 steps" in log and "images unreadable" in log

    printed = re.findall(r"^checkpoint=(.+)$", result.stdout, flags=re.MULTILINE)
    assert len(printed) == 4
    for num, path in enumerate(printed):  # jobs run in order, each prints its own path
        path = Path(path)
        (job,) = [j for j in jobs if j.name.split("_", 1)[0] == str(num)]
        assert path.is_absolute() and path.is_relative_to(job), (path, job)
    assert "Restoring states from the checkpoint" not in result.stdout + result.stderr
    assert len(re.findall(r"hcl-train: 2 steps", result.stdout)) == 4
    assert result.stdout.count("16 images unreadable") == 4  # the data line once per job


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("hcl.lam=-1", "hcl.lam=-1"),
        ("hcl.lam=nan", "hcl.lam=nan"),
        ("hcl.tau=0", "hcl.tau=0"),
        ("hcl.c=0", "hcl.c=0"),
        ("hcl.queue_size=-5", "hcl.queue_size=-5"),
        ("hcl.head=both", "hcl.head='both'"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("ckpt_path=missing.ckpt", "ckpt_path=missing.ckpt"),
    ],
)
def test_invalid_values_fail_before_training(tmp_path: Path, override: str, key: str) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path), override, f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=re.escape(key)):
        train(cfg)
    assert not (tmp_path / "synthetic").exists()  # nothing was generated or trained
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_paths_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dir"
    cfg = compose_config(["data=coco", f"data.image_dir={missing}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.image_dir=.*no_such_dir.*not found"):
        train(cfg)
    cfg = compose_config(["data=coco", f"data.image_dir={tmp_path}", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.ann_file is required"):
        validate_config(cfg)
    cfg = compose_config(
        ["data=coco", f"data.image_dir={tmp_path}", f"data.ann_file={tmp_path / 'x.json'}"]
    )
    with pytest.raises(ConfigError, match=r"data\.ann_file=.*x\.json: file not found"):
        validate_config(cfg)
    cfg = compose_config(["data=folder"])
    with pytest.raises(ConfigError, match=r"data\.image_dir is required"):
        validate_config(cfg)


def test_unknown_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException, match=r"model/foo"):
        compose_config(["model=foo"])


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("hcl.tau=0", "hcl.tau=0: must be a finite number > 0"),
        ("trainer.max_steps=abc", "trainer.max_steps='abc': must be an integer >= -1"),
        ("data.batch_size=-1", "data.batch_size=-1: must be an integer >= 1"),
        ("hcl.lamda=0.1", "unknown key 'hcl.lamda'; did you mean 'hcl.lam'?"),
        (
            "+hcl.lamda=0.1",
            "unknown key 'hcl.lamda'; did you mean 'hcl.lam'? (+hcl.lamda adds a key that "
            "nothing in the hcl group reads)",
        ),
    ],
)
def test_cli_fails_in_one_line_before_anything_is_built(
    tmp_path: Path, override: str, line: str
) -> None:
    result = run_cli(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"hcl-train: error: {line}"]  # no traceback
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "cache").exists()  # no data generated


def test_cli_error_traceback_on_request_and_help(tmp_path: Path) -> None:
    result = run_cli(
        "hcl.tau=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, full_error=True
    )
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ConfigError: hcl.tau=0: must be a finite number > 0" in result.stderr

    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and not result.stderr
    assert re.search(r"^  model +densecl, moco_v2\*, orl$", result.stdout, flags=re.MULTILINE)
    assert re.search(r"^  data +coco, folder, synthetic\*$", result.stdout, flags=re.MULTILINE)
    assert "  hcl.lam=0.1 " in result.stdout and "λ, weight of L_hyp" in result.stdout
    assert "  hcl.tau=0.2 " in result.stdout and "  hcl.c=0.05 " in result.stdout
    assert "preset_model" not in result.stdout

    result = run_cli("model=foo", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/foo'" in result.stderr
    assert "moco_v2" in result.stderr  # the available options are listed


def wandb_records(run_file: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style log
    (7-byte header, 32 KiB blocks of chunks with a 7-byte header: crc, length, type)
    of ``wandb_internal_pb2.Record`` protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_logger_runs_offline(tmp_path: Path, monkeypatch) -> None:
    """logger=wandb needs no account: the offline run file holds the composed config, the
    step metrics and the monitor's norm histograms."""
    import json

    import wandb

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        *tiny_overrides(tmp_path),
        f"output_dir={tmp_path / 'run'}",
        "logger=wandb",
        "callbacks.hyperbolic_monitor.every_n_steps=1",
        "hcl.lam=0.3",
    ]
    try:
        train(compose_config(overrides))
    finally:
        wandb.finish()
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    config = {
        item.key: json.loads(item.value_json)
        for record in records
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }
    assert config["hcl"]["lam"] == 0.3 and config["model"]["backbone"] == "resnet18"
    assert config["hcl_lambda"] == 0.3  # Lightning's model hyperparameters as well
    rows = [
        {
            "/".join(item.nested_key) if item.nested_key else item.key: json.loads(item.value_json)
            for item in record.history.item
        }
        for record in records
        if record.WhichOneof("record_type") == "history"
    ]
    keys = set().union(*rows)
    assert "train/loss_euc" in keys and "train/ball/scene_norm_mean" in keys
    hists = [r for r in rows if "train/ball/scene_norm_hist/_type" in r]
    assert [r["trainer/global_step"] for r in hists] == [0, 1]  # every step
    for row in hists:
        assert row["train/ball/scene_norm_hist/_type"] == "histogram"
        assert sum(row["train/ball/scene_norm_hist/values"]) == 4  # batch of 4 scenes
        bins = row["train/ball/object_norm_hist/bins"]
        assert 0 <= bins[0] and bins[-1] < 1
