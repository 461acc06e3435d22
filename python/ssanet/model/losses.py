"""Training losses: MAC (paper eqs. 1-2), NTS-Net's ranking loss for the proposal head, and the
classification losses of the DSM, OP and final logits, summed by :class:`SSANetLoss`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MACLoss", "RankingLoss", "SSANetLoss", "morphological_alignment_loss"]


def morphological_alignment_loss(part_features: torch.Tensor) -> torch.Tensor:
    """Lm of eq. 2 for every ordered pair of samples: ``[B, K, D] -> [B, B]``.

    ``Lm(f_xi, f_tau) = 1/K sum_j log(1 + sum_{m != j} exp(S_jm - S_jj))`` with
    ``S_jn = cos(f_xi,j, f_tau,n)``: the positive of part j is the same part index n = j of the
    other sample, the negatives are its other indices. The sum equals
    ``logsumexp_n(S_jn) - S_jj``, a cross-entropy over the K indices with target j.
    """
    unit = F.normalize(part_features, dim=-1)
    similarity = torch.einsum("xjd,ynd->xyjn", unit, unit)  # [B, B, K, K]
    positive = similarity.diagonal(dim1=-2, dim2=-1)  # [B, B, K]: S_jj
    return (torch.logsumexp(similarity, dim=-1) - positive).mean(dim=-1)


class MACLoss(nn.Module):
    """Morphological alignment constraints, eq. 1: the cross-entropy of every part's
    prediction plus ``lambda_`` times Lm (eq. 2) over all B*B ordered pairs (xi, tau) of the
    batch (xi = tau included, as in the eq.'s double sum).

    Args:
        lambda_: weight of the pair term (the paper: 0.5). 0 gives proposals without MAC
            (Table 3), leaving the parts' cross-entropy.
        reduction: "sum" is eq. 1 as written; "mean" (default) divides the cross-entropy sum by
            B*K and the pair sum by B*B, so the loss does not grow with the batch.

    Forward: ``part_features [B, K, D]`` (f_ij), ``part_logits [B, K, C]`` (FC(f_ij)),
    ``labels [B]`` -> scalar.
    """

    def __init__(self, lambda_: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.lambda_ = lambda_
        self.reduction = reduction

    def forward(
        self, part_features: torch.Tensor, part_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        parts = part_logits.shape[1]
        cross_entropy = F.cross_entropy(
            part_logits.flatten(0, 1), labels.repeat_interleave(parts), reduction=self.reduction
        )
        if self.lambda_ == 0:
            return cross_entropy
        pairs = morphological_alignment_loss(part_features)
        pair_term = pairs.mean() if self.reduction == "mean" else pairs.sum()
        return cross_entropy + self.lambda_ * pair_term

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, reduction={self.reduction!r}"


class RankingLoss(nn.Module):
    """NTS-Net's ranking loss for the proposal head: the parts' scores should be ordered as the
    part classifier's confidence in the true class.

    For every image and every pair (i, j) of its parts where part j's cross-entropy exceeds
    part i's, adds ``relu(margin - score_i + score_j)``; the sum is divided by B.

    Forward: ``part_scores [B, K]``, ``part_logits [B, K, C]``, ``labels [B]`` -> scalar.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, part_scores: torch.Tensor, part_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        batch, parts = part_scores.shape
        part_loss = F.cross_entropy(
            part_logits.detach().flatten(0, 1), labels.repeat_interleave(parts), reduction="none"
        ).view(batch, parts)
        worse = part_loss[:, None, :] > part_loss[:, :, None]  # [B, i, j]: loss_j > loss_i
        hinge = F.relu(self.margin - part_scores[:, :, None] + part_scores[:, None, :])
        return (hinge * worse).sum() / batch


class SSANetLoss(nn.Module):
    """All losses of an :class:`~ssanet.SSANetOutput`, as a dict whose "total" is their sum.

    - "final": cross-entropy of the final logits (DSM + OP);
    - "dsm", "op": cross-entropy of the DSM and of the OP logits (when those heads exist);
    - "mac": :class:`MACLoss` of the parts' features and part-classifier logits;
    - "rank": ``rank_weight`` times :class:`RankingLoss` of the proposal scores.

    Without proposals (the plain backbone) only "final" (and "total") are present.
    """

    def __init__(
        self, mac_lambda: float = 0.5, rank_weight: float = 1.0, mac_reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.mac = MACLoss(mac_lambda, mac_reduction)
        self.rank = RankingLoss()
        self.rank_weight = rank_weight

    def forward(self, output, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {"final": F.cross_entropy(output.logits, labels)}
        if output.dsm_logits is not None:
            losses["dsm"] = F.cross_entropy(output.dsm_logits, labels)
        if output.op_logits is not None:
            losses["op"] = F.cross_entropy(output.op_logits, labels)
        if output.part_logits is not None:
            losses["mac"] = self.mac(output.part_features, output.part_logits, labels)
            losses["rank"] = self.rank_weight * self.rank(
                output.part_scores, output.part_logits, labels
            )
        losses["total"] = sum(losses.values())
        return losses
