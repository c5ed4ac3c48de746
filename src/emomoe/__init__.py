"""emomoe: pretrain Mixture-of-Experts language models whose modules emerge (EMO)."""

__version__ = "0.1.0"
