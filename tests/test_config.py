"""validate_config: data hygiene, trainer and queue values, and incompatible combinations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from hcl_lightning.config import ConfigError, check_overrides, validate_config
from tests.helpers import compose_config, tiny_overrides


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.images.max_bad_fraction=1.5"],
            "data.images.max_bad_fraction=1.5: must be a finite number in [0, 1]",
        ),
        (
            ["data.images.max_image_pixels=0"],
            "data.images.max_image_pixels=0: must be an integer >= 1 or null",
        ),
        (["data.loader.num_workers=-1"], "data.loader.num_workers=-1: must be an integer >= 0"),
        (
            ["data.crops.min_object_size=-2"],
            "data.crops.min_object_size=-2: must be a finite number >= 0",
        ),
        (["model.lr=0"], "model.lr=0: must be a finite number > 0"),
        (["model.momentum=1.5"], "model.momentum=1.5: must be a finite number in [0, 1]"),
        (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be"),
        (["trainer.precision=8"], "trainer.precision=8: must be one of"),
        (
            ["trainer.precision=16-mixed"],
            "trainer.precision='16-mixed' with trainer.accelerator=cpu",
        ),
        (
            ["model.queue_size=18"],
            "model.queue_size=18: must be a multiple of the global batch 4 "
            "(data.batch_size=4 x 1 devices x nodes)",
        ),
        (
            ["trainer.devices=2", "+trainer.num_nodes=2", "model.queue_size=24"],
            "model.queue_size=24: must be a multiple of the global batch 16",
        ),
        (
            ["callbacks.nonfinite_guard.max_consecutive=0"],
            "callbacks.nonfinite_guard.max_consecutive=0: must be an integer >= 1",
        ),
    ],
)
def test_invalid_values_and_combinations_are_named(tmp_path, overrides, message) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path), *overrides, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.precision=bf16-mixed"],
        ["model.queue_size=32"],
        ["trainer.devices=auto", "model.queue_size=24"],  # world size unknown: not checked
        ["data.images.max_image_pixels=null", "data.images.max_bad_fraction=0"],
    ],
)
def test_valid_combinations_pass(tmp_path, overrides) -> None:
    validate_config(
        compose_config([*tiny_overrides(tmp_path), *overrides, f"output_dir={tmp_path}"])
    )


@pytest.mark.parametrize("preset", ["demo", "paper"])
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_shipped_configs_are_valid(tmp_path, preset, trainer) -> None:
    validate_config(
        compose_config([f"preset={preset}", f"trainer={trainer}", f"output_dir={tmp_path}"])
    )


def test_paper_preset_keeps_the_official_lr_and_batch_statistics_keys(tmp_path) -> None:
    paper = compose_config(["preset=paper", f"output_dir={tmp_path}"])
    assert paper.model.lr == 0.3 and paper.model.hcl_key_batchnorm == "batch"
    assert paper.model.hcl_learn_alpha is False and paper.model.backbone == "resnet50"
    default = compose_config([f"output_dir={tmp_path}"])
    assert default.model.hcl_key_batchnorm == "running"


def test_former_keys_map_to_their_new_keys(tmp_path) -> None:
    """The λ warm-up left the monitor: its former keys set LambdaWarmup's."""
    cfg = compose_config(
        [
            *tiny_overrides(tmp_path),
            "+callbacks.hyperbolic_monitor.lambda_warmup_steps=7",
            "+callbacks.hyperbolic_monitor.target_lambda=0.3",
            f"output_dir={tmp_path}",
        ]
    )
    with pytest.warns(DeprecationWarning, match="callbacks.lambda_warmup.warmup_steps"):
        validate_config(cfg)
    assert cfg.callbacks.lambda_warmup.warmup_steps == 7
    assert cfg.callbacks.lambda_warmup.target_lambda == 0.3
    assert "lambda_warmup_steps" not in cfg.callbacks.hyperbolic_monitor


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hcl.alpha=2"], "hcl.alpha=2: must lie in (0, 1]"),
        (["callbacks.lambda_warmup.warmup_steps=-1"], "callbacks.lambda_warmup.warmup_steps=-1"),
        (
            ["data.crops.fused_color_jitter=1"],
            "data.crops.fused_color_jitter=1: must be true or false",
        ),
        (["data.loader.persistent_workers=2"], "data.loader.persistent_workers=2: must be true"),
    ],
)
def test_constructor_checks_name_the_hydra_key(tmp_path, overrides, message) -> None:
    cfg = compose_config([*tiny_overrides(tmp_path), *overrides, f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


def test_precisions_are_lightnings() -> None:
    from lightning_fabric.connector import _PRECISION_INPUT_STR

    from hcl_lightning.config import PRECISIONS

    assert set(get_args(_PRECISION_INPUT_STR)) <= set(PRECISIONS)


GROUPS = ("model", "data", "trainer", "hcl", "callbacks", "logger", "preset", "preset_model")


@pytest.mark.parametrize(
    "overrides",
    [
        ["hcl.lam=0.5", "model=densecl", "model.dense_lambda=0.3", "data=coco"],
        ["hcl.lam=0,0.1", "model=orl,densecl", "model.pred_hidden_dim=64"],  # a sweep
        ["+trainer.enable_model_summary=false", "~callbacks.online_probes"],
        ["data=coco", "+data.validation.fraction=0.1"],  # a ValidationOptions argument
        ["+model.hcl_head=separate"],  # a former key, mapped by validate_config
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.run.dir=x"],
    ],
)
def test_overrides_that_something_reads_pass(overrides) -> None:
    check_overrides(overrides, GROUPS, compose_config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=orl", "model.queue_size=16"], "unknown key 'model.queue_size'"),
        (["++hcl.tau_=0.1"], "unknown key 'hcl.tau_'; did you mean 'hcl.tau'?"),
        (["+model.lamda=0.1"], r"\+model.lamda adds a key that nothing in the model group"),
        (["+data.images.max_bad=0.1"], "did you mean 'data.images.max_bad_fraction'"),
        (["+data.scene_sise=32"], r"did you mean 'data.scene_size'\? \(\+data.scene_sise adds"),
        (["hcl.lam=(0"], "hcl.lam="),  # Hydra's parse error, in one line
    ],
)
def test_overrides_nothing_reads_are_refused(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        check_overrides(overrides, GROUPS, compose_config)
    assert "\n" not in str(info.value)
