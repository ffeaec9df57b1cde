"""Subject fine-tuning: selective layers, scale-weighted loss, prior distillation, small adapters."""
from .groups import DEFAULT_GROUPS, GROUPS, TrainableSet, parse_groups
from .loss import scale_weights, token_weights
from .subject import FinetuneConfig, FinetuneResult, default_train_config, finetune_subject, prior_labels
from .switch import AdapterSwitch

__all__ = ["AdapterSwitch", "DEFAULT_GROUPS", "FinetuneConfig", "FinetuneResult", "GROUPS", "TrainableSet",
           "default_train_config", "finetune_subject", "parse_groups", "prior_labels", "scale_weights", "token_weights"]
