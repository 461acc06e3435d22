"""Discriminative scale mining (paper section 3.2, eqs. 6-8; docs/operators.md sections 2 and 3).

Each part proposal is expanded and shrunk into S scale candidates (``multiscale_roi_crop``);
the features of the S candidates are matched against one filter bank per part index under all
S circulant shifts (``scale_align``), and the best shift per class is the part's logit.

Initial scale of the logits. ``ScaleAlign``'s initialisation gives unit-variance logits for
zero-mean unit-variance features, but the DSM receives pooled post-ReLU features, whose scale
depends on the backbone and on its batch norms' mode (a plain-trained ResNet-18's, in eval
mode, gave part logits of standard deviation 14), and the K parts' logits are summed into the
DSM logits that the loss sees (K = 4 parts of standard deviation about 1.6 gave 3.3 here; 3.6
was measured on the synthetic config). So each candidate's feature vector is normalised to
zero mean and unit variance over its D entries (a layer norm without learned scale and shift),
and the filters start ``1 / sqrt(K)`` times ``ScaleAlign``'s: the summed logits start at about
unit variance whatever the backbone (checked in tests/test_benchmark.py).
"""

from __future__ import annotations

import torch
from torch import nn

import ssanet_ops.nn

from .operators import operators

__all__ = ["DSM_MODES", "DiscriminativeScaleMining"]

#: "align": the paper's DSM. "fixed": shift 0 only, y = sum_n w_n . phi_n (Table 5, DSM(fixed)).
#: "single": one scale, the proposal itself (S = 1, Table 5's single-scale variant).
DSM_MODES = ("align", "fixed", "single")


class DiscriminativeScaleMining(nn.Module):
    """Per-part circulant scale alignment: ``phi [B, K, S, D] -> logits [B, K, C]``.

    Image-major in and out, like the rest of the model; inside, the parts lead (``[K, B, ...]``)
    so that one grouped ``scale_align`` call scores every part with its own filters.

    Args:
        in_features: D, the feature length of one candidate.
        num_classes: C.
        num_parts: K; part index k has its own filters ``[C, S, D]`` (``ScaleAlign`` groups).
        num_scales: S.
        mode: one of :data:`DSM_MODES` ("single" needs ``num_scales == 1``).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_parts: int,
        num_scales: int,
        mode: str = "align",
    ) -> None:
        super().__init__()
        if mode not in DSM_MODES:
            raise ValueError(f"dsm mode must be one of {DSM_MODES}, got {mode!r}")
        if mode == "single" and num_scales != 1:
            raise ValueError(f"dsm mode 'single' uses one scale, got num_scales={num_scales}")
        self.mode = mode
        self.num_parts = num_parts
        self.num_scales = num_scales
        self.num_classes = num_classes
        self.normalize = nn.LayerNorm(in_features, elementwise_affine=False)
        self.scale_align = ssanet_ops.nn.ScaleAlign(
            in_features, num_classes, num_scales, groups=num_parts
        )
        with torch.no_grad():
            self.scale_align.weight.mul_(num_parts**-0.5)  # K parts summed: unit variance

    def forward(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, K, C]`` and the winning shift r* ``[B, K, C]`` of ``phi [B, K, S, D]``."""
        weight, bias = self.scale_align.weight, self.scale_align.bias
        by_part = self.normalize(phi).transpose(0, 1)  # [K, B, S, D]
        if self.mode == "fixed":
            logits = torch.einsum("knsd,kcsd->knc", by_part, weight) + bias[:, None, :]
            shift = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
        else:
            logits, shift = operators().scale_align(by_part, weight, bias)
        return logits.transpose(0, 1), shift.transpose(0, 1)

    def aligned_index(self, logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """The candidate aligned with the filters' original scale, for each part's predicted
        class: ``j* = (m0 - r*) mod S`` with ``m0 = (S - 1) // 2`` (docs/operators.md section 3).

        ``logits``, ``shift``: ``[B, K, C]`` (any leading dimensions). Returns ``[B, K]`` (long).
        """
        predicted = logits.argmax(dim=-1, keepdim=True)
        winning_shift = shift.gather(-1, predicted).squeeze(-1)
        return ((self.num_scales - 1) // 2 - winning_shift) % self.num_scales
