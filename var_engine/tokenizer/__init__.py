"""Multi-scale VQVAE tokenizer."""
from .quantizer import MultiScaleQuantizer, phi_indices
from .tokenizer import Tokenizer, TokenizerOutput

__all__ = ["MultiScaleQuantizer", "Tokenizer", "TokenizerOutput", "phi_indices"]
