"""``HCLMixin``: adds HCL's hyperbolic scene-object branch to any lightly baseline."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hcl_lightning.batchnorm import running_batchnorm
from hcl_lightning.checks import ArgumentError, check_choice, check_flag, check_number
from hcl_lightning.distributed import is_distributed, shuffle_bn
from hcl_lightning.hyperbolic.heads import PoincareProjectionHead
from hcl_lightning.hyperbolic.losses import HyperbolicInfoNCELoss
from hcl_lightning.optim import attach_parameters

__all__ = [
    "HCLMixin",
    "HEAD_MODES",
    "KEY_BATCHNORM_MODES",
    "MODEL_KEY",
    "check_batched_forward",
    "check_hcl_arguments",
]

#: Checkpoint key of what rebuilds an HCL module (see ``HCLMixin.on_save_checkpoint``).
MODEL_KEY = "hcl_model"
#: ``hcl_head_mode`` values: reuse the baseline's projection head, or an MLP of our own.
HEAD_MODES = ("shared", "separate")
#: ``hcl_key_batchnorm`` values: BatchNorm of the object keys with running statistics,
#: or with the statistics of the key batch (shuffled across devices under DDP).
KEY_BATCHNORM_MODES = ("running", "batch")


def check_hcl_arguments(
    *,
    hcl_lambda: float,
    hcl_tau: float,
    hcl_curvature: float,
    hcl_queue_size: int,
    hcl_alpha: float | None,
    hcl_clip_r: float | None,
    hcl_head_mode: str,
    hcl_dim: int,
    hcl_learn_curvature: bool,
    hcl_batched_forward: bool,
    hcl_learn_alpha: bool = False,
    hcl_key_batchnorm: str = "running",
) -> None:
    """The checks of :class:`HCLMixin`'s arguments, without building anything.

    The head's and the loss's arguments are checked by
    :meth:`PoincareProjectionHead.check_arguments` and
    :meth:`HyperbolicInfoNCELoss.check_arguments`, under the mixin's names.

    Raises:
        ArgumentError: (a ``ValueError``) naming the first argument out of range.
    """
    check_number("hcl_lambda", hcl_lambda, ">= 0", lambda v: v >= 0)
    check_choice("hcl_head_mode", hcl_head_mode, HEAD_MODES)
    check_number("hcl_dim", hcl_dim, ">= 1", lambda v: v >= 1, integer=True)
    check_flag("hcl_learn_curvature", hcl_learn_curvature)
    check_flag("hcl_batched_forward", hcl_batched_forward)
    check_flag("hcl_learn_alpha", hcl_learn_alpha)
    check_choice("hcl_key_batchnorm", hcl_key_batchnorm, KEY_BATCHNORM_MODES)
    names = {
        "temperature": "hcl_tau",
        "curvature": "hcl_curvature",
        "queue_size": "hcl_queue_size",
        "alpha": "hcl_alpha",
        "clip_r": "hcl_clip_r",
    }
    try:
        HyperbolicInfoNCELoss.check_arguments(hcl_tau, hcl_curvature, hcl_queue_size)
        PoincareProjectionHead.check_arguments(hcl_curvature, hcl_alpha, hcl_clip_r)
    except ArgumentError as error:
        raise error.renamed(names.get(error.argument, error.argument)) from None


def check_batched_forward(baseline: Any, name: str, hcl_batched_forward: bool) -> None:
    """Raises ``ArgumentError`` if ``hcl_batched_forward`` is set for a baseline without
    the ``hcl_batched_step`` hook (see :class:`HCLMixin`).

    Args:
        baseline: the baseline class, or ``super()`` inside the mixin.
        name: what to call it in the message.
        hcl_batched_forward: the flag.
    """
    if hcl_batched_forward and getattr(baseline, "hcl_batched_step", None) is None:
        raise ArgumentError(
            "hcl_batched_forward",
            hcl_batched_forward,
            f"needs a baseline hook hcl_batched_step; {name} has no hcl_batched_step hook "
            "(MoCoV2 and DenseCL have one)",
            message=f"hcl_batched_forward=True: {name} has no "
            "hcl_batched_step(batch, batch_idx, query_extra, key_extra) hook (see "
            "HCLMixin; MoCoV2 has one); use hcl_batched_forward=False",
        )


def _last_linear(module: nn.Module) -> nn.Linear | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _first_linear(module: nn.Module) -> nn.Linear | None:
    return next((m for m in module.modules() if isinstance(m, nn.Linear)), None)


class HCLMixin:
    """Hyperbolic Contrastive Learning as a mixin for lightly-style LightningModules.

    ``class MyHCL(HCLMixin, MyBaseline)`` keeps ``MyBaseline`` unchanged and adds
    ``L = L_euc + λ·L_hyp`` (Ge et al., CVPR 2023):

    * ``L_euc``: the baseline's own ``training_step``, called through ``super()`` with
      a lightly-style batch ``(views, labels, names)`` built from the HCL batch;
    * ``L_hyp``: a hyperbolic InfoNCE between scene crops (online encoder → ball, the
      queries) and the object crops they contain (key encoder → ball, the keys),
      against a queue of past object keys.

    The encoders are found by lightly's names: ``backbone``, ``projection_head``,
    ``backbone_momentum``, ``projection_head_momentum``. A baseline without momentum
    encoder (SimCLR-style) computes keys with the online encoder, without gradient.
    Modules laid out differently define ``hcl_query(x)`` / ``hcl_key(x)`` (Euclidean
    features of scene / object crops) in the baseline itself (the mixin defers to them)
    or in the HCL subclass.

    With ``hcl_head_mode="shared"`` (the paper) the ball map sits on the baseline's
    projection head output; with ``"separate"`` an own MLP maps backbone features
    (keys use the same MLP, without gradient). The hyperbolic parameters reach the
    optimiser whatever the baseline's ``configure_optimizers`` returns (see
    :func:`hcl_lightning.optim.attach_parameters`); scale and curvature get no weight
    decay.

    ``λ = 0`` skips the branch entirely: loss, gradients, RNG and BatchNorm statistics
    are those of the baseline (the "HCL w/o L_hyp" ablation of the paper).

    ``hcl_batched_forward=True`` runs the scenes in the baseline's online pass and the
    objects in its key pass, as one forward each (``cat[views, scenes]`` and
    ``cat[views, objects]``), through the baseline's hook
    ``hcl_batched_step(batch, batch_idx, query_extra, key_extra) -> (output,
    query_features, key_features)``: ``output`` is what its ``training_step`` returns,
    the features are the backbone features (``backbone(x).flatten(1)``) of the extra
    crops, online with gradient and from the key encoder without; the mixin maps them
    as :meth:`hcl_query` / :meth:`hcl_key` do (projection head in shared mode), so
    ``hcl_query`` / ``hcl_key`` overrides are not used. :class:`MoCoV2` and
    :class:`DenseCL` implement it. Views, scenes and objects must have one shape
    (``data.scene_size == data.object_size``); other batches raise a ``ValueError``.
    In train mode BatchNorm then normalises each kind of crop with statistics of the
    mixed batch (the performance page of the docs discusses what that changes); the
    default separate passes keep per-kind statistics, as the paper's code does.

    HCL batches are mappings with keys ``views`` (list of 2 tensors), ``scene``,
    ``object`` and optionally ``labels``, ``index``, ``n_objects`` (see
    :class:`hcl_lightning.data.HCLDataModule`); a plain lightly batch is passed to the
    baseline untouched.

    Args:
        hcl_lambda: weight λ of the hyperbolic loss (paper: 0.1), >= 0.
        hcl_tau: temperature τ of the hyperbolic InfoNCE (paper: 0.2), > 0.
        hcl_curvature: curvature ``c`` of the Poincaré ball (paper: 0.05), > 0.
        hcl_queue_size: object keys in the hyperbolic queue (paper: 65536); 0 uses
            in-batch negatives.
        hcl_alpha: initial scale before ``expmap0`` (``None``: ``1/sqrt(dim)``).
        hcl_clip_r: outlier guard on the tangent norm (``None``: 99.5% of the radius,
            0: off).
        hcl_head_mode: ``"shared"`` or ``"separate"`` (formerly ``hcl_head``, still
            accepted with a ``DeprecationWarning``).
        hcl_dim: output dimension of a separate head (default 128).
        hcl_learn_curvature: learn ``c`` (geoopt's softplus parametrisation).
        hcl_batched_forward: one online and one key forward per step for the baseline's
            views and the scene / object crops together (see above); needs the
            baseline's ``hcl_batched_step``.
        hcl_learn_alpha: learn the scale ``alpha`` (default: frozen at its initial
            value; the official code has no scale). Learnt, it gets gradient from the
            scenes only but also scales the keys.
        hcl_key_batchnorm: ``"running"`` (default): the key encoder's (and a separate
            head's) BatchNorm layers normalise the object crops with their running
            statistics, so a key depends on its own crop only; ``"batch"``: with the
            key batch's statistics, shuffled across devices under DDP (MoCo's
            shuffle-BN, the official code). On one device ``"batch"`` lets scenes find
            their objects through the shared batch statistics instead of the content.
            With ``hcl_batched_forward`` the keys come from the baseline's key pass.
        **kwargs: passed on to the baseline's ``__init__``.

    Raises:
        ArgumentError: (a ``ValueError``) for an argument out of range (see
            :func:`check_hcl_arguments`), or ``hcl_batched_forward=True`` for a baseline
            without ``hcl_batched_step``.

    Example:
        >>> class HCLMoCoV2(HCLMixin, MoCoV2):
        ...     pass
        >>> model = HCLMoCoV2(hcl_lambda=0.1, backbone="resnet18", small_input=True)
    """

    def __init__(
        self,
        *args: Any,
        hcl_lambda: float = 0.1,
        hcl_tau: float = 0.2,
        hcl_curvature: float = 0.05,
        hcl_queue_size: int = 65536,
        hcl_alpha: float | None = None,
        hcl_clip_r: float | None = None,
        hcl_head_mode: str = "shared",
        hcl_dim: int = 128,
        hcl_learn_curvature: bool = False,
        hcl_batched_forward: bool = False,
        hcl_learn_alpha: bool = False,
        hcl_key_batchnorm: str = "running",
        **kwargs: Any,
    ) -> None:
        if "hcl_head" in kwargs:  # the former name; popped before the baseline records kwargs
            warnings.warn(
                "HCLMixin(hcl_head=...) is deprecated; use hcl_head_mode=... (self.hcl_head "
                "is the PoincareProjectionHead module)",
                DeprecationWarning,
                stacklevel=2,
            )
            hcl_head_mode = kwargs.pop("hcl_head")
        hcl_arguments = {k: v for k, v in locals().items() if k.startswith("hcl_")}
        check_hcl_arguments(**hcl_arguments)
        super().__init__(*args, **kwargs)
        self._hcl_arguments = hcl_arguments
        check_batched_forward(super(), f"{type(self).__name__}'s baseline", hcl_batched_forward)
        self.hcl_batched_forward = hcl_batched_forward
        self.hcl_key_batchnorm = hcl_key_batchnorm
        self.hcl_lambda = float(hcl_lambda)
        self.hcl_head_mode = hcl_head_mode
        input_dim, hidden_dim, output_dim = self._hcl_head_dims(hcl_head_mode, hcl_dim)
        self.hcl_head = PoincareProjectionHead(
            input_dim=input_dim,
            hidden_dim=hidden_dim,
            output_dim=output_dim,
            curvature=hcl_curvature,
            learn_curvature=hcl_learn_curvature,
            alpha=hcl_alpha,
            learn_alpha=hcl_learn_alpha,
            clip_r=hcl_clip_r,
        )
        self.hcl_criterion = HyperbolicInfoNCELoss(
            temperature=hcl_tau,
            curvature=hcl_curvature,
            queue_size=hcl_queue_size,
            dim=self.hcl_head.output_dim,
        )
        self.hcl_learn_curvature = hcl_learn_curvature
        #: Detached (scene, object) ball points of the last training step, for monitors.
        self.hcl_last_embeddings: tuple[Tensor, Tensor] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records what rebuilds this module: ``checkpoint["hcl_model"]`` =
        ``{"class": "package.module.Class", "hcl_arguments": {"hcl_lambda": ..., ...}}``.

        With it, :func:`~hcl_lightning.analysis.load_model` (and ``hcl-analyze``) rebuild
        any HCL module, shipped or a user's subclass, without being told its class; the
        baseline's own arguments come from its saved hyperparameters, as in Lightning.
        """
        super().on_save_checkpoint(checkpoint)
        cls = type(self)
        checkpoint[MODEL_KEY] = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "hcl_arguments": dict(self._hcl_arguments),
        }

    # -- encoders (override for modules that are not named the lightly way) ---------
    def _hcl_head_dims(self, mode: str, dim: int) -> tuple[int, int | None, int | None]:
        """(input, hidden, output) dims of the Poincaré head for ``mode``."""
        head = getattr(self, "projection_head", None)
        if mode == "shared":
            last = _last_linear(head) if head is not None else None
            if last is None:
                raise AttributeError(
                    f"{type(self).__name__} has no `projection_head` with a Linear layer; "
                    "use hcl_head_mode='separate' or override hcl_query/hcl_key and _hcl_head_dims"
                )
            return last.out_features, None, None
        first = _first_linear(head) if head is not None else None
        features = getattr(self, "feat_dim", None) or (first.in_features if first else None)
        if features is None:
            raise AttributeError(
                f"{type(self).__name__}: cannot infer the backbone feature dimension for "
                "hcl_head_mode='separate'; set `self.feat_dim` in the baseline"
            )
        return features, 2 * dim if dim < features else features, dim

    def _hcl_suffix(self, momentum: bool) -> str:
        return "_momentum" if momentum and hasattr(self, "backbone_momentum") else ""

    def _hcl_projection(self, momentum: bool) -> nn.Module:
        """What maps backbone features to head inputs: ``projection_head`` (shared mode,
        online or momentum) or nothing (separate mode)."""
        if self.hcl_head_mode == "separate":
            return nn.Identity()
        return getattr(self, f"projection_head{self._hcl_suffix(momentum)}")

    def _hcl_encoder(self, momentum: bool) -> nn.Module:
        """``backbone`` (+ ``projection_head`` in shared mode), online or momentum."""
        suffix = self._hcl_suffix(momentum)
        backbone = getattr(self, f"backbone{suffix}", None)
        if backbone is None:
            raise AttributeError(
                f"{type(self).__name__} has no `backbone`; override hcl_query and hcl_key"
            )
        return nn.Sequential(backbone, nn.Flatten(start_dim=1), self._hcl_projection(momentum))

    def hcl_query(self, x: Tensor) -> Tensor:
        """Euclidean features of the scene crops (online encoder, with gradient).

        A baseline whose encoder differs from lightly's layout defines ``hcl_query``
        itself; the mixin defers to it.
        """
        baseline_hook = getattr(super(), "hcl_query", None)
        if baseline_hook is not None:
            return baseline_hook(x)
        return self._hcl_encoder(momentum=False)(x)

    @torch.no_grad()
    def hcl_key(self, x: Tensor) -> Tensor:
        """Euclidean features of the object crops (key encoder, no gradient).

        Uses the momentum encoder when the baseline has one, otherwise the online
        encoder, with BatchNorm as ``hcl_key_batchnorm`` says (running statistics, or
        the batch's with shuffle-BN across devices under DDP). A baseline that defines
        ``hcl_key`` itself is deferred to.
        """
        baseline_hook = getattr(super(), "hcl_key", None)
        if baseline_hook is not None:
            return baseline_hook(x)
        encoder = self._hcl_encoder(momentum=True)
        if self.hcl_key_batchnorm == "running":
            with running_batchnorm(encoder):
                return encoder(x)
        return shuffle_bn(encoder, x) if is_distributed() else encoder(x)

    # -- training -------------------------------------------------------------------
    def hcl_baseline_batch(self, batch: Mapping[str, Any]) -> Any:
        """The batch the baseline's ``training_step`` expects.

        Default: the lightly-style ``(views, labels, names)``. A baseline that needs more
        of the HCL batch (e.g. ORL's RoIs) defines ``hcl_baseline_batch`` itself; the
        mixin defers to it.
        """
        baseline_hook = getattr(super(), "hcl_baseline_batch", None)
        if baseline_hook is not None:
            return baseline_hook(batch)
        return batch["views"], batch.get("labels"), batch.get("index")

    def hcl_embed(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Ball points of the scenes (queries) and of their objects (keys)."""
        query = self.hcl_head(self.hcl_query(batch["scene"]))
        with torch.no_grad():
            key = self._hcl_key_head(self.hcl_key(batch["object"]))
        return query, key

    def _hcl_key_head(self, features: Tensor) -> Tensor:
        """The Poincaré head on key features, its BatchNorm as ``hcl_key_batchnorm`` says."""
        if self.hcl_key_batchnorm == "running":
            with running_batchnorm(self.hcl_head):
                return self.hcl_head(features)
        return self.hcl_head(features)

    def _hcl_batched_embed(self, batch: Mapping[str, Any], batch_idx: int) -> tuple:
        """``(baseline output, query, key)`` from the baseline's ``hcl_batched_step``."""
        crops = {"views": batch["views"][0], "scene": batch["scene"], "object": batch["object"]}
        shapes = {name: tuple(x.shape[1:]) for name, x in crops.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"hcl_batched_forward=True concatenates views, scenes and objects, which "
                f"needs one crop shape; got {shapes}. Use equal crop sizes "
                "(data.scene_size = data.object_size) or hcl_batched_forward=False"
            )
        output, query_features, key_features = super().hcl_batched_step(
            self.hcl_baseline_batch(batch), batch_idx, batch["scene"], batch["object"]
        )
        query = self.hcl_head(self._hcl_projection(momentum=False)(query_features))
        with torch.no_grad():
            key = self._hcl_key_head(self._hcl_projection(momentum=True)(key_features))
        return output, query, key

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        """Baseline step on the object views, plus ``λ·L_hyp`` on scene/object pairs."""
        if not isinstance(batch, Mapping):
            return super().training_step(batch, batch_idx)
        if self.hcl_batched_forward and self.hcl_lambda > 0:
            output, query, key = self._hcl_batched_embed(batch, batch_idx)
        else:
            output = super().training_step(self.hcl_baseline_batch(batch), batch_idx)
            query = key = None
        loss_euc = output["loss"] if isinstance(output, Mapping) else output
        batch_size = batch["scene"].shape[0]
        self.log("train/loss_euc", loss_euc.detach(), batch_size=batch_size)
        if self.hcl_lambda == 0:
            return output
        if query is None:
            query, key = self.hcl_embed(batch)
        self.hcl_last_embeddings = (query.detach(), key)
        curvature = self.hcl_head.curvature if self.hcl_learn_curvature else None
        loss_hyp, top1 = self.hcl_criterion(query, key, curvature=curvature, return_accuracy=True)
        loss = loss_euc + self.hcl_lambda * loss_hyp
        self.log("train/loss_hyp", loss_hyp.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {
                "train/hyp_acc1": top1,
                "train/norm_scene": query.detach().norm(dim=1).mean(),
                "train/norm_object": key.norm(dim=1).mean(),
                "train/hcl_alpha": self.hcl_head.alpha.detach(),
                "train/loss_total": loss.detach(),
            },
            batch_size=batch_size,
        )
        if isinstance(output, Mapping):
            return {**output, "loss": loss}
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """The baseline's ``validation_step`` (Lightning's default: nothing).

        Defined so that Lightning runs the validation loop whenever the datamodule has
        validation data, for callbacks that validate (e.g.
        :class:`~hcl_lightning.callbacks.online_probes.OnlineProbes`), also for baselines without a step.
        """
        return super().validation_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        """The baseline's optimisers, with the hyperbolic parameters attached."""
        return attach_parameters(
            super().configure_optimizers(),
            self.hcl_head.parameters(),
            no_weight_decay=self.hcl_head.no_weight_decay_parameters(),
        )
