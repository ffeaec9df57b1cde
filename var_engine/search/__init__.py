"""Test-time search over scales: TTS-VAR and Best-of-N, plugged into the sampler as a scale hook."""
from .compute import plain_sample_flops, run_cost, scale_flops
from .kmeans import kmeans, representatives
from .imagenet import (EfficientNetLiteConfig, ImageNetClassifier, ImageNetFeatures, imagenet_reward,
                       load_imagenet_classifier)
from .latent import (LatentClassifier, LatentClassifierConfig, LatentFeatures, LatentReward, load_latent_reward,
                     train_latent_reward)
from .rewards import ClassifierReward, EvaluatorFeatures, FeatureExtractor, Reward, evaluator_reward, layout_signature
from .schedule import Schedule, schedule_for_budget, shaped_schedule
from .selection import POTENTIALS, potential, resample, resampling_weights
from .configs import SEARCH_MODES, BestOfNConfig, TTSConfig
from .hook import SearchHook
from .plan import SearchPlan, plan_search
from .trace import SearchTrace, Selection

__all__ = ["POTENTIALS", "SEARCH_MODES", "BestOfNConfig", "ClassifierReward", "EvaluatorFeatures", "FeatureExtractor",
           "Reward", "Schedule", "SearchHook", "SearchPlan", "SearchTrace", "Selection", "TTSConfig", "evaluator_reward",
           "EfficientNetLiteConfig", "ImageNetClassifier", "ImageNetFeatures", "imagenet_reward",
           "load_imagenet_classifier", "LatentClassifier", "LatentClassifierConfig", "LatentFeatures", "LatentReward", "load_latent_reward",
           "train_latent_reward", "kmeans", "layout_signature", "plain_sample_flops", "plan_search", "potential", "representatives",
           "resample", "resampling_weights", "run_cost", "scale_flops", "schedule_for_budget", "shaped_schedule"]
