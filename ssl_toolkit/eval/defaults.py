"""The defaults of the evaluation protocols, in one place and without torch, so that the command line's help
names them too: kNN (InstDisc, Wu et al. 2018, as solo-learn), the SGD linear probe (SimCLR's and
solo-learn's linear evaluation) and fine-tuning (SimCLR's appendix B.5)."""

KNN_K = 200  # neighbours that vote
KNN_TEMPERATURE = 0.07  # vote weight exp(s / T)

SGD_PROBE_EPOCHS = 100
SGD_PROBE_LR = 0.1  # at a global batch of 256, scaled linearly

FINETUNE_LR = 0.05  # at a global batch of 256, scaled linearly
FINETUNE_EPOCHS_FEW_LABELS = 60  # 1% of the labels or fewer
FINETUNE_EPOCHS = 30  # more labels


def finetune_epochs(label_fraction: float) -> int:
    """SimCLR's: 60 epochs of 1% of the labels (or fewer), 30 of more."""
    return FINETUNE_EPOCHS_FEW_LABELS if label_fraction <= 0.01 else FINETUNE_EPOCHS
