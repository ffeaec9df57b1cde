"""var-engine: visual autoregressive (next-scale prediction) image generation."""
from .cpu_memory import keep_freed_cpu_memory
from .config import ModelConfig, SamplingConfig, TokenizerConfig, TransformerConfig
from .errors import CheckpointError, ConfigError, InputError, VarEngineError
from .pipeline import GenerateOutput, GenerationStats, Pipeline, default_checkpoint_dir
from .tokenizer import Tokenizer
from .transformer import VARTransformer

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "GenerateOutput", "GenerationStats", "InputError", "ModelConfig",
           "Pipeline", "SamplingConfig", "Tokenizer", "TokenizerConfig", "TransformerConfig", "VARTransformer",
           "VarEngineError", "default_checkpoint_dir", "keep_freed_cpu_memory"]
