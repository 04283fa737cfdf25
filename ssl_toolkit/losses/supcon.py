"""Supervised contrastive loss (SupCon), both variants of Khosla et al."""

from __future__ import annotations

import torch

from ssl_toolkit.losses.candidates import LabelBatch, LabelLoss, check_choice, check_positive
from ssl_toolkit.losses.infonce import infonce_sum

VARIANTS = ("out", "in")


class SupConLoss(LabelLoss):
    """Khosla et al. 2020, "Supervised Contrastive Learning", eq. 2 (`out`) and eq. 3 (`in`).

    With s the cosine similarity, τ the temperature, P(i) the other samples sharing i's label and
    A(i) every sample but i:

        out: L_i = −(1/|P(i)|) Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ) )
        in:  L_i = −log( (1/|P(i)|) Σ_{p∈P(i)} exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ) )

    The loss is the mean of L_i over anchors with |P(i)| > 0 (0, still differentiable, if there are
    none). There is no extra τ/base_τ factor. With sample ids as labels this is SimCLR's NT-Xent for
    any number of views; with classes it is SupCon.

    Args:
        temperature: τ.
        variant: "out" (the paper's recommendation) or "in".
        gather_distributed: use every process's embeddings and labels as candidates.
    """

    def __init__(self, temperature: float = 0.1, variant: str = "out", gather_distributed: bool = True):
        super().__init__(gather_distributed)
        self.temperature = check_positive("temperature", temperature)
        self.variant = check_choice("variant", variant, VARIANTS)

    def loss_sum(self, batch: LabelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return infonce_sum(batch, temperature=self.temperature, variant=self.variant)
