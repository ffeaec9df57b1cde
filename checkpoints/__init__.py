"""Models shipped with var-engine, installed as the `var_engine_checkpoints` package data.

`default/` is the embedded default model that `Pipeline.from_pretrained()` loads.
"""
