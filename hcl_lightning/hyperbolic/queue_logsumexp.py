"""Fused log-sum-exp of hyperbolic InfoNCE logits against a bank of negatives.

For queries ``x`` (N, D) and a constant bank ``Y`` (K, D) of negatives, the hyperbolic
InfoNCE needs ``logsumexp_k(-d_c(x_i, y_k) / tau)`` and its gradient with respect to
``x``. Autograd over the elementwise chain would keep about ten N x K intermediates
and run as many passes over memory. This autograd ``Function`` instead walks ``Y`` in
chunks that stay in cache, keeps only ``t`` (the arcosh argument minus one) and the
logits for the backward pass, and applies the analytic gradient

.. math::

    \\frac{\\partial t_{ik}}{\\partial x_i} = \\frac{4c}{\\alpha_i\\beta_k}(x_i - y_k)
      + \\frac{2c\\,t_{ik}}{\\alpha_i} x_i,
    \\qquad \\alpha_i = 1 - c\\lVert x_i\\rVert^2,\\ \\beta_k = 1 - c\\lVert y_k\\rVert^2,

so the backward pass is one more matrix product, as for a Euclidean InfoNCE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hcl_lightning.hyperbolic.geometry import (
    arcosh1p,
    arcosh_floor,
    conformal_denominator,
    exact_matmul,
    pairwise_squared_distance,
    sinh_arcosh1p,
    sqrt_curvature,
)

__all__ = ["hyperbolic_negative_logsumexp"]


class _HyperbolicNegativeLogSumExp(torch.autograd.Function):
    """Chunked forward/backward; see :func:`hyperbolic_negative_logsumexp`."""

    @staticmethod
    def forward(ctx, query: Tensor, negatives: Tensor, c: float, inv_tau: float, chunk: int):
        scale = inv_tau / float(sqrt_curvature(c))
        q_sq = query.square().sum(dim=1)
        n_sq = negatives.square().sum(dim=1)
        coef_q = (2 * c) / conformal_denominator(q_sq, c)
        inv_beta = conformal_denominator(n_sq, c).reciprocal_()
        min_t = arcosh_floor(query.dtype)
        t_chunks, logit_chunks, chunk_lse, chunk_min_t = [], [], [], []
        for start in range(0, negatives.shape[0], chunk):
            stop = start + chunk
            t = pairwise_squared_distance(query, negatives[start:stop], q_sq, n_sq[start:stop])
            t.mul_(coef_q.unsqueeze(1)).mul_(inv_beta[start:stop].unsqueeze(0)).clamp_min_(min_t)
            logits = arcosh1p(t, clamp=False).mul_(-scale)
            t_chunks.append(t)
            logit_chunks.append(logits)
            chunk_lse.append(torch.logsumexp(logits, dim=1))
            chunk_min_t.append(t.amin(dim=1))
        lse = torch.logsumexp(torch.stack(chunk_lse, dim=1), dim=1)
        nearest_t = torch.stack(chunk_min_t, dim=1).amin(dim=1)
        max_logit = arcosh1p(nearest_t, clamp=False).mul_(-scale)
        ctx.mark_non_differentiable(max_logit)
        ctx.save_for_backward(query, negatives, coef_q, inv_beta, lse, *t_chunks, *logit_chunks)
        ctx.scale, ctx.chunk = scale, chunk
        return lse, max_logit

    @staticmethod
    def backward(ctx, grad_lse: Tensor, _grad_max: Tensor):
        query, negatives, coef_q, inv_beta, lse, *saved = ctx.saved_tensors
        n_chunks = len(saved) // 2
        t_chunks, logit_chunks = saved[:n_chunks], saved[n_chunks:]
        # d lse / d t = p * (-scale / sqrt(t (t + 2))), p = softmax over negatives.
        row_factor = (grad_lse * -ctx.scale).unsqueeze(1)
        sum_v = torch.zeros_like(lse)
        sum_wt = torch.zeros_like(lse)
        weighted_negatives = torch.zeros_like(query)
        for index, (t, logits) in enumerate(zip(t_chunks, logit_chunks, strict=True)):
            start = index * ctx.chunk
            w = (logits - lse.unsqueeze(1)).exp_().mul_(row_factor)
            w.div_(sinh_arcosh1p(t))
            sum_wt += (w * t).sum(dim=1)
            w.mul_(inv_beta[start : start + t.shape[1]].unsqueeze(0))
            sum_v += w.sum(dim=1)
            weighted_negatives.addmm_(w, negatives[start : start + t.shape[1]])
        coef = coef_q.unsqueeze(1)
        grad_query = 2 * coef * (query * sum_v.unsqueeze(1) - weighted_negatives)
        grad_query += coef * query * sum_wt.unsqueeze(1)
        return grad_query, None, None, None, None


def hyperbolic_negative_logsumexp(
    query: Tensor,
    negatives: Tensor,
    c: float,
    temperature: float,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """``logsumexp_k(-d_c(query_i, negatives_k) / temperature)`` and the largest logit.

    Differentiable with respect to ``query`` only (the bank of negatives is a constant,
    as a MoCo queue is). Computes in float32 (float64 inputs stay float64) with autocast
    and TF32 disabled. Memory: two N x K float tensors kept for backward.

    Args:
        query: (N, D) points in the Poincaré ball of curvature ``-c``.
        negatives: (K, D) points in the same ball, K >= 1.
        c: curvature magnitude (> 0), a Python float.
        temperature: logits are ``-distance / temperature``.
        chunk_size: negatives processed per block (tune for cache size).

    Returns:
        ``(lse, max_logit)``: both (N,); ``max_logit`` is not differentiable and serves
        to compute top-1 accuracy against a positive logit.
    """
    with exact_matmul(query.device.type):
        dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        negatives = negatives.detach().to(dtype)
        return _HyperbolicNegativeLogSumExp.apply(
            query.to(dtype), negatives, float(c), 1.0 / temperature, int(chunk_size)
        )
