"""The online linear probe: a classifier on the stop-gradient features h of each pretraining batch.

solo-learn and lightly report how linearly separable `h` is while the encoder trains, from a linear layer
fed the detached features of the training views and trained alongside with its own optimiser. It reads the
features after the step's backward and draws no random numbers, so the encoder's gradients, its weights
and every later view are those of a run without it, bit for bit. Every process trains the same probe on
the labelled samples of the global batch (features gathered, not gradients reduced), so the copies stay
equal without a collective of their own and the main process's copy is the one checkpointed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from ssl_toolkit.files import write_safetensors

STATE_FILE = "online_probe.safetensors"  # in each checkpoint folder


class OnlineLinearProbe:
    """Standardisation (BatchNorm without affine parameters) then a linear layer, (N, F) → logits (N, C).

    Starts at zero weights (no random draw); AdamW at `lr` without weight decay. `step` trains it on one
    batch, `top1` scores features of held-out samples, `metrics` reports the last training batch.
    """

    def __init__(self, feature_dim: int, num_classes: int, accelerator: Accelerator, *, lr: float = 1e-3):
        self.accelerator = accelerator
        self.model = nn.Sequential(
            nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes)
        )
        nn.init.zeros_(self.model[1].weight)
        nn.init.zeros_(self.model[1].bias)
        self.model.to(accelerator.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # loss, correct, count

    def step(self, features: list[torch.Tensor], targets: torch.Tensor) -> None:
        """One update on the features h (B, F) of each view of B samples with `targets` (B,) (-1: no label).

        A collective: every process passes its share of the batch and all update on the whole of it.
        """
        x = torch.cat([h.detach().float() for h in features])
        y = targets.to(x.device).repeat(len(features))
        if self.accelerator.num_processes > 1:
            x, y = self.accelerator.gather((x.contiguous(), y.contiguous()))
        labelled = y >= 0
        if int(labelled.sum()) < 2:  # BatchNorm needs two samples; an unlabelled batch teaches nothing
            return
        x, y = x[labelled], y[labelled]
        self.model.train()
        with torch.enable_grad():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        correct = (logits.detach().argmax(1) == y).sum()
        self._last = (loss.detach(), correct, torch.tensor(len(y)))

    def metrics(self) -> dict[str, float]:
        """The last training batch's loss and top-1 (`online_probe_loss`, `online_probe_train_top1`)."""
        if self._last is None:
            return {}
        loss, correct, count = self._last
        return {"online_probe_loss": loss.item(), "online_probe_train_top1": correct.item() / count.item()}

    @torch.no_grad()
    def top1(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Top-1 on features (N, F) of held-out samples with targets (N,), BatchNorm's running statistics."""
        self.model.eval()
        predicted = self.model(features.to(self.accelerator.device).float()).argmax(1)
        return (predicted.cpu() == targets.cpu()).float().mean().item()

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The weights, BatchNorm statistics and optimiser moments as named tensors (no pickle)."""
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        return tensors

    def save(self, folder: Path) -> Path:
        return write_safetensors(self.state_tensors(), Path(folder) / STATE_FILE, {})

    def restore(self, folder: Path) -> bool:
        """Load the state saved in checkpoint `folder`; False (and a fresh probe) when it holds none."""
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return False
        device = self.accelerator.device
        tensors = {key: value.to(device) for key, value in load_file(str(path)).items()}
        prefix = "model."
        self.model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                # The step count stays on the CPU, where AdamW keeps it.
                state.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        return True
