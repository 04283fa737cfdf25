"""ssl_toolkit: self-supervised and contrastive representation learning at scale."""

__version__ = "0.1.0"
