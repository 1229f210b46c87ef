"""Two CPU processes (gloo) against one: queues, shuffle-BN and the loss under DDP.

The 2-rank runs use ``strategy=HCLDDPStrategy()`` (``ddp``, buffer broadcast off) in a
subprocess running a script this module writes: Lightning re-launches that script for
rank 1, as it does for ``hcl-train``. Each rank saves its losses, keys and queues.

The model is HCL on MoCo-v2 with every BatchNorm replaced by the identity, so that the
encoders act on each sample alone: then 2 ranks × B/2 samples must reproduce 1 process
× B samples. Shuffle-BN stays on (across ranks under DDP): with per-sample encoders the
shuffle must be undone exactly, which the comparison checks too.

What holds, precisely: rank r's loss is the mean over *its* B/2 queries (lightly's
NTXentLoss and our hyperbolic InfoNCE with a queue take their negatives from the queue,
not from the other rank's batch), so rank 0's loss alone is *not* the single-process
loss; the mean of the rank losses is, and so are the DDP-averaged gradients, hence the
parameters and every later step. The queues are equal on both ranks because each rank
enqueues the gathered keys ``[rank 0's, rank 1's]``, which are the single process's
keys in the same order (rank r reads samples ``[r·B/2, (r+1)·B/2)`` of each global
batch).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
GLOBAL_BATCH = 8
QUEUE = 32

SCRIPT = textwrap.dedent(
    '''
    """Tiny HCL-MoCo-v2 fit; saves each rank's losses, keys and queues."""
    import sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset

    from hcl_lightning.baselines import HCLMoCoV2
    from hcl_lightning.distributed import HCLDDPStrategy
    from tests.helpers import SceneBatches

    out, world, steps, global_batch, queue = (
        Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    )
    sync_bn = len(sys.argv) > 6 and sys.argv[6] == "sync_bn"
    local = global_batch // world


    def no_batchnorm(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
            else:
                no_batchnorm(child)


    class Recorded(HCLMoCoV2):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.records = []

        def forward_momentum(self, x):
            key = super().forward_momentum(x)
            self._keys.append(key)
            return key

        def training_step(self, batch, batch_idx):
            self._keys = []
            loss = super().training_step(batch, batch_idx)
            k0, k1 = self._keys
            self.records.append(
                {"loss": loss.detach().clone(), "k0": k0, "k1": k1,
                 "hyp_key": self.hcl_last_embeddings[1].clone(),
                 "index": batch["index"].clone()}
            )
            return loss

        def on_train_start(self):
            self.broadcast_buffers = getattr(self.trainer.strategy.model, "broadcast_buffers", None)

        def train_dataloader(self):
            # rank r reads samples [r*local, (r+1)*local) of each global batch
            rank = self.trainer.global_rank
            order = [s * global_batch + rank * local + i
                     for s in range(steps) for i in range(local)]
            return DataLoader(Subset(SceneBatches(n=steps * global_batch), order),
                              batch_size=local, shuffle=False)


    torch.manual_seed(0)
    model = Recorded(backbone="resnet18", small_input=False, proj_hidden_dim=32, out_dim=16,
                     queue_size=queue, hcl_queue_size=queue, batch_size=local, hcl_lambda=0.5)
    if not sync_bn:
        for encoder in (model.backbone, model.backbone_momentum):
            no_batchnorm(encoder)
    strategy = HCLDDPStrategy() if world > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy=strategy, max_steps=steps,
        sync_batchnorm=sync_bn, use_distributed_sampler=False, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model)
    torch.save(
        {
            "records": model.records,
            "bank_a": model.criterion_a.memory_bank.bank.clone(),
            "bank_b": model.criterion_b.memory_bank.bank.clone(),
            "ptr_a": int(model.criterion_a.memory_bank.bank_ptr),
            "hyp_bank": model.hcl_criterion.queue.bank.clone(),
            "hyp_ptr": int(model.hcl_criterion.queue.bank_ptr),
            "broadcast_buffers": model.broadcast_buffers,
            "sync_bn": any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
            "world_size": trainer.world_size,
        },
        out / f"rank{trainer.global_rank}_of{world}.pt",
    )
    '''
)


def run_script(tmp_path: Path, world: int, *extra: str, timeout: float = 150):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
    }
    args = [str(tmp_path), str(world), str(STEPS), str(GLOBAL_BATCH), str(QUEUE), *extra]
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result, [torch.load(tmp_path / f"rank{r}_of{world}.pt") for r in range(world)]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """(2-rank result, [rank 0, rank 1], [single process])."""
    tmp = tmp_path_factory.mktemp("ddp")
    result, ranks = run_script(tmp, 2)
    _, (single,) = run_script(tmp, 1)
    return result, ranks, single


def test_queues_are_gathered_not_broadcast(runs) -> None:
    result, (r0, r1), _ = runs
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["broadcast_buffers"] is False  # equality below comes from gathering
    assert "shuffle-BN across 2 ranks (cpu, gloo)" in result.stdout + result.stderr
    for key in ("bank_a", "bank_b", "hyp_bank"):
        assert torch.equal(r0[key], r1[key]), key
    filled = STEPS * GLOBAL_BATCH
    assert r0["ptr_a"] == r1["ptr_a"] == filled
    assert r0["hyp_ptr"] == r1["hyp_ptr"] == filled

    # queue rows = keys of rank 0 then rank 1, step after step (MoCo's concat_all_gather)
    def stacked(name: str, normalize: bool) -> torch.Tensor:
        rows = []
        for step in range(STEPS):
            for rank in (r0, r1):
                key = rank["records"][step][name]
                rows.append(_normalize(key) if normalize else key)
        return torch.cat(rows)

    torch.testing.assert_close(r0["bank_a"][:filled], stacked("k1", True))  # q0 vs k1
    torch.testing.assert_close(r0["bank_b"][:filled], stacked("k0", True))
    torch.testing.assert_close(r0["hyp_bank"][:filled], stacked("hyp_key", False))
    # and the ranks saw different samples: rank 0 the first half of each global batch
    assert r0["records"][0]["index"].tolist() == [0, 1, 2, 3]
    assert r1["records"][0]["index"].tolist() == [4, 5, 6, 7]


def test_two_ranks_reproduce_one_process_on_the_same_samples(runs) -> None:
    _, (r0, r1), single = runs
    assert single["world_size"] == 1
    for step in range(STEPS):
        one = single["records"][step]
        assert one["index"].tolist() == list(range(step * 8, step * 8 + 8))
        # keys of the momentum encoder (shuffled and unshuffled across ranks) per sample
        for name in ("k0", "k1", "hyp_key"):
            both = torch.cat([r0["records"][step][name], r1["records"][step][name]])
            torch.testing.assert_close(both, one[name], rtol=1e-4, atol=1e-5)
        # the mean of the rank losses is the single-process loss; rank 0 alone is not
        mean = (r0["records"][step]["loss"] + r1["records"][step]["loss"]) / 2
        torch.testing.assert_close(mean, one["loss"], rtol=1e-4, atol=1e-5)
    for key in ("bank_a", "bank_b", "hyp_bank"):
        torch.testing.assert_close(r0[key], single[key], rtol=1e-4, atol=1e-5)
    gaps = [abs(float(r0["records"][s]["loss"] - single["records"][s]["loss"])) for s in range(3)]
    assert max(gaps) > 1e-4  # per-rank losses are half-batch means


def test_sync_batchnorm_on_cpu_falls_back_with_a_log_line(tmp_path: Path) -> None:
    result, (r0, r1) = run_script(tmp_path, 2, "sync_bn")
    output = result.stdout + result.stderr
    assert "sync_batchnorm=True needs GPUs; on cpu (gloo) it is off" in output
    assert not r0["sync_bn"] and not r1["sync_bn"]
    assert torch.equal(r0["hyp_bank"], r1["hyp_bank"])


def test_cli_ddp_on_cpu_two_processes_one_output_directory(tmp_path: Path) -> None:
    """``hcl-train trainer=ddp trainer.accelerator=cpu trainer.devices=2`` (gloo)."""
    from tests.helpers import run_cli, tiny_overrides

    runs = tmp_path / "outputs"
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("data.synthetic.root")]
    result = run_cli(
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        *overrides,
        f"data.synthetic.root={tmp_path / 'synthetic'}",
        "data.val_synthetic.n_images=8",
        "callbacks.online_probes.every_n_steps=1",
        f"hydra.run.dir={runs}/run",
        cwd=tmp_path,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert [p.name for p in runs.iterdir()] == ["run"]  # no directory per DDP process
    run = runs / "run"
    assert len(list(run.rglob("config.yaml"))) == 1  # .hydra written by rank 0 only
    assert (run / "checkpoints" / "last.ckpt").is_file()
    (metrics,) = (run / "csv").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    # the online probes under DDP: features gathered, counts summed over the ranks
    for name in ("val/linear_top1", "val/knn_top1"):
        (value,) = [float(row[name]) for row in rows if row.get(name)]
        assert 0 <= value <= 1, name
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (probe,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("OnlineProbes")]
    # 2 steps x 4 object crops x 2 ranks: the bank holds both ranks' features
    # (crops of class -1, random regions where no box is large enough, are not banked)
    labelled = int((probe["bank_labels"] >= 0).sum())
    assert labelled == probe["bank_next"] and 2 * 4 < labelled <= 2 * 4 * 2
    assert "shuffle-BN across 2 ranks (cpu, gloo)" in output
    assert "* 4 (batch) * 2 (devices)" in output  # lr scaled with the global batch
    assert output.count("hcl-train: 2 steps") == 1  # the summary is printed by rank 0


def test_slurm_launcher_config_composes() -> None:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides = [
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
    ]
    with initialize_config_module(config_module="hcl_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
    assert cfg.hydra.launcher.nodes == 2 and cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.launcher.max_num_timeout > 0
    assert cfg.trainer.strategy._target_ == "hcl_lightning.distributed.HCLDDPStrategy"
    assert (cfg.trainer.precision, cfg.trainer.sync_batchnorm) == ("bf16-mixed", False)
