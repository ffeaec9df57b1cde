"""Pipeline: tokenizer + transformer + sampler composed behind one `generate` call."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .cache import analytic_kv_bytes
from .class_names import class_names_for, resolve_class
from .checkpoints import (adapt_tokenizer_state_dict, infer_tokenizer_config, infer_transformer_config,
                          load_component, load_weights, read_model_config, read_pretrained_config,
                          read_state_dict, save_pretrained)
from .config import OFFICIAL_PATCH_NUMS_256, ModelConfig, SamplingConfig
from .devices import resolve_device
from .editing import (EditConfig, EditForcer, check_mask_covers, fit_to_model, image_batch, keep_alpha, mask_batch,
                      paste_back)
from .errors import CheckpointError, ConfigError, InputError
from .sampling import (EagerRunner, LayerPlan, ScaleHook, ScaleStats, last_run_scales, layer_capacities,
                       make_runner, sample)
from .search import BestOfNConfig, Reward, SearchTrace, TTSConfig, load_latent_reward, plan_search
from .sampling.forcing import TokenForcer
from .search.compute import run_cost
from .search.scorers import shipped_scorer
from .tokenizer import Tokenizer
from .transformer import VARTransformer
from .variant import DepthPlan

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .checkpoints import Adapter
    from .finetune import AdapterSwitch

DEFAULT_CHECKPOINT_ENV = "VAR_ENGINE_CHECKPOINT"
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_checkpoint_dir() -> Path:
    """The embedded default model, or $VAR_ENGINE_CHECKPOINT.

    Installed (wheel, plain or editable install) it is the `var_engine_checkpoints` package data; in a
    source tree that is not installed, the repository's `checkpoints/default`.
    """
    env = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("var_engine_checkpoints")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "default" / "config.json").is_file():
            return Path(location) / "default"
    return Path(__file__).resolve().parent.parent / "checkpoints" / "default"


@dataclass
class GenerationStats:
    seconds: float  # wall time of the whole call
    transformer_seconds: float
    decode_seconds: float
    kv_bytes: int  # peak bytes held by the KV cache during the call
    per_scale: list[ScaleStats] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # CUDA only: peak allocated memory of the call
    hook_seconds: float = 0.0  # inside transformer_seconds: time spent in scale hooks (their decodes included)
    decodes: int = 0  # partial images decoded for hooks
    compute: float = 0.0  # transformer compute of the call in plain full-depth samples (search.compute)
    search_overhead_seconds: float = 0.0  # search only: decodes, rewards, features, clustering, gathers


@dataclass
class GenerateOutput:
    images: torch.Tensor | None  # (B, 3, H, W) in [0, 1]; None with decode=False
    tokens: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B,)
    stats: GenerationStats
    search: SearchTrace | None = None  # with search=: the schedule, every selection, the winners' rewards
    seed: int | list[int] | None = None  # the seed(s) used; generate(seed=None) picks one, so this reproduces it


def _serialized(method):
    """Run a Pipeline method under its generation lock (one generation at a time per pipeline)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.generation_lock:
            return method(self, *args, **kwargs)
    return locked


def _with_adapter(method):
    """Add `adapter=` to a Pipeline method: that call runs with the adapter (a path or `Adapter`) in place of
    whatever is loaded, and the previous weights come back afterwards (call it under the generation lock)."""
    @functools.wraps(method)
    def call(self, *args, adapter=None, **kwargs):
        if adapter is None:
            return method(self, *args, **kwargs)
        with self.using_adapter(adapter):
            return method(self, *args, **kwargs)
    return call


class Pipeline:
    """A loaded model; `generate` runs labels -> tokens -> images.

    Concurrency: sampling uses state shared by the whole pipeline (static KV caches, runners' compiled
    steps, cached kernels), so `generate` holds `generation_lock` (re-entrant): calls from several
    threads run one after another and give the images of the same calls made in sequence. For
    parallel generation load one pipeline per worker process.
    """

    def __init__(self, tokenizer: Tokenizer, transformer: VARTransformer, config: ModelConfig,
                 components: dict[str, torch.nn.Module] | None = None, meta: dict[str, Any] | None = None):
        self.tokenizer = tokenizer.eval().set_channels_last(True)
        self.transformer = transformer.eval()
        self.config = config
        self.components = dict(components or {})  # extra modules shipped beside (e.g. an evaluator)
        self.meta = dict(meta or {})
        self.runner: EagerRunner = EagerRunner()
        self.generation_lock = threading.RLock()
        for p in (*self.tokenizer.parameters(), *self.transformer.parameters()):
            p.requires_grad_(False)

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_official(cls, vae: str | Path, var: str | Path, patch_nums: Sequence[int] = OFFICIAL_PATCH_NUMS_256,
                      num_heads: int | None = None, *, quant_resi: float = 0.5, device: str | torch.device = "cpu",
                      attention: str | None = None) -> "Pipeline":
        """Load official VAR release files (`.pth` or `.safetensors`, or `hf://FoundationVision/var/...`)."""
        patch_nums = tuple(patch_nums)
        vae_sd, var_sd = read_state_dict(vae), read_state_dict(var)
        tok_cfg = infer_tokenizer_config(vae_sd, patch_nums, quant_resi=quant_resi)
        var_cfg = infer_transformer_config(var_sd, patch_nums, num_heads)
        try:
            config = ModelConfig(tok_cfg, var_cfg)
        except ConfigError as e:
            raise CheckpointError(f"VQVAE and VAR checkpoints do not belong together: {e}") from e
        tokenizer, transformer = Tokenizer(tok_cfg), VARTransformer(var_cfg)
        load_weights(tokenizer, adapt_tokenizer_state_dict(vae_sd, tokenizer), "VQVAE")
        load_weights(transformer, var_sd, "VAR")
        return cls(tokenizer, transformer, config, meta={"source": "official"}).to(device).with_attention(attention)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str | torch.device = "cpu",
                        attention: str | None = None) -> "Pipeline":
        """Load a var-engine checkpoint directory; None or 'default' is the embedded default model."""
        directory = default_checkpoint_dir() if path in (None, "default") else Path(path).expanduser()
        meta = read_pretrained_config(directory)
        config = read_model_config(directory, meta)
        tokenizer = load_component(Tokenizer(config.tokenizer), directory, "tokenizer")
        transformer = load_component(VARTransformer(config.transformer), directory, "transformer")
        meta["path"] = str(directory)
        components = {}
        if (directory / "evaluator.safetensors").is_file():
            from .evaluator import load_evaluator

            components["evaluator"] = load_evaluator(directory)
        latent_reward = load_latent_reward(directory)
        if latent_reward is not None:
            latent_reward.classifier.cfg.check_fits(config.tokenizer)
            components["latent_reward"] = latent_reward.classifier
        return cls(tokenizer, transformer, config, components, meta).to(device).with_attention(attention)

    @_serialized
    def save_pretrained(self, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
        if self._adapters is not None and self._adapters.active is not None:
            raise ConfigError("an adapter is loaded: save its file instead, or unload_adapter() before saving the base")
        return save_pretrained(directory, self.config,
                               {"tokenizer": self.tokenizer, "transformer": self.transformer}, extra_config)

    def to(self, device: str | torch.device) -> "Pipeline":
        device = resolve_device(device)
        self.tokenizer.to(device)
        self.transformer.to(device)
        for m in self.components.values():
            m.to(device)
        return self

    def with_attention(self, name: str | None) -> "Pipeline":
        """Choose the attention backend for the device the model is on ('auto', 'sdpa', 'math', 'xformers')."""
        self.transformer.set_attention(name)
        return self

    def with_linear(self, name: str | None) -> "Pipeline":
        """Choose the transformer's linear kernels ('auto': oneDNN for few-row CPU float32 inference
        against large weights, else BLAS; 'blas'; 'onednn'). Raises ConfigError for an unknown or
        unavailable backend."""
        try:
            self.transformer.set_linear(name)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        return self

    def with_runner(self, name: str = "eager", compile_mode: str = "default",
                    compile_granularity: str = "auto") -> "Pipeline":
        """How scale steps execute: 'eager' (reference), 'compile' (torch.compile with `compile_mode`:
        'default', 'reduce-overhead', 'max-autotune'; `compile_granularity` 'block', 'step' or 'auto', see
        CompiledRunner), 'cuda-graphs' (captured once per scale, CUDA only)."""
        if name == "cuda-graphs" and self.device.type != "cuda":
            raise ConfigError("the cuda-graphs runner needs the model on a CUDA device (--device cuda, or Pipeline.to('cuda'))")
        try:
            self.runner = make_runner(name, compile_mode, compile_granularity)
        except (ValueError, RuntimeError) as e:
            raise ConfigError(str(e)) from e
        return self

    def autocast(self, precision: str) -> torch.autocast:
        """The autocast context for 'fp32' (off), 'bf16' or 'fp16' on this pipeline's device."""
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        dtype = PRECISIONS[precision]
        if dtype is torch.float16 and self.device.type == "cpu":
            raise ConfigError("fp16 needs a CUDA device; use bf16 (or fp32, the reference) on CPU")
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    @property
    def device(self) -> torch.device:
        return self.transformer.pos_1LC.device

    # ------------------------------------------------------------------ inputs
    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per class: the checkpoint's "class_names", ImageNet's for official 1,000-class models,
        else the ids as text."""
        return class_names_for(self.config.num_classes, self.meta)

    def class_id(self, value: int | str) -> int:
        """A class id, -1/'null' or a class name (or one of its synonyms, any case) -> the id (-1: unconditional)."""
        return resolve_class(value, self.class_names)

    def parse_labels(self, labels: int | str | Iterable[int | str] | torch.Tensor | None) -> torch.Tensor:
        """Class ids -> LongTensor (B,); -1 or 'null' is the unconditional (null) class."""
        n = self.config.num_classes
        if labels is None:
            raise InputError("labels are required (or pass batch= to draw random classes)")
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise InputError(f"class ids must be integers, got a {labels.dtype} tensor")
            items: list[Any] = labels.flatten().tolist()
        elif isinstance(labels, (int, str)):
            items = [labels]
        else:
            items = list(labels)
        if not items:
            raise InputError("labels must not be empty")
        out = []
        for item in items:
            if isinstance(item, str) and item.strip().lower() in ("null", "none", "uncond"):
                out.append(n)
                continue
            if isinstance(item, bool) or not isinstance(item, int):
                if isinstance(item, str) and item.strip().lstrip("-").isdigit():
                    item = int(item)
                elif isinstance(item, str):
                    item = self.class_id(item)
                else:
                    raise InputError(f"class id {item!r} is not an integer")
            if item == -1:
                out.append(n)
            elif not 0 <= item < n and item not in self.adapter_class_ids():
                raise InputError(f"class id {item} is out of range: this model has classes 0..{n - 1} "
                                 "(and -1 or 'null' for unconditional"
                                 + (f"; the loaded adapter adds {self.adapter_class_ids()})" if self._adapters and
                                    self.adapter_class_ids() else ")"))
            else:
                out.append(item)
        return torch.tensor(out, dtype=torch.long)

    def make_generator(self, seed: int | None) -> torch.Generator:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(seed)
        return g

    def make_generators(self, seed: int | Sequence[int] | None) -> torch.Generator | list[torch.Generator]:
        """One generator for an int/None seed; one per sample for a list of seeds."""
        if isinstance(seed, (list, tuple)):
            if not seed:
                raise InputError("the list of seeds must not be empty")
            return [self.make_generator(s) for s in seed]
        return self.make_generator(seed)

    # ------------------------------------------------------------------ depth plans (VARiant)
    @property
    def is_supernet(self) -> bool:
        """True when the checkpoint was trained with subnet steps (its config records 'variant')."""
        return bool(self.meta.get("variant"))

    def default_switch_scale(self) -> int:
        """The checkpoint's recorded switch scale, else 60% of the scales (6 of 10 as in the paper)."""
        variant = self.meta.get("variant") or {}
        if "switch_scale" in variant:
            return int(variant["switch_scale"])
        return max(1, round(0.6 * self.config.transformer.num_scales))

    def depth_plan(self, depth: int | None, switch_scale: int | None = None,
                   finish_scale: int | None = None) -> DepthPlan | None:
        """Full depth up to `switch_scale` scales, then the equidistant depth-`depth` subnet (None: full);
        with `finish_scale`, full depth again from that scale on (the earlier scales' caches are recomputed
        at full depth there: a search explores on the subnet and finishes its survivors at full depth)."""
        D = self.config.depth
        if depth is None or depth == D:
            if depth is None and (switch_scale is not None or finish_scale is not None):
                raise InputError("switch_scale and finish_scale need a subnet depth")
            if depth is None:
                return None
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise InputError(f"depth must be an integer in [1, {D}], got {depth!r}")
        try:
            if finish_scale is not None and (isinstance(finish_scale, bool) or not isinstance(finish_scale, int)):
                raise InputError(f"finish_scale must be an integer, got {finish_scale!r}")
            plan = DepthPlan(D, depth, self.default_switch_scale() if switch_scale is None else switch_scale,
                             self.config.patch_nums, finish_scale)
        except ConfigError as e:
            raise InputError(str(e)) from e
        if depth < D and not self.is_supernet:
            log.warning("this checkpoint was not trained as a supernet: depth-%d subnet quality is untrained", depth)
        return plan

    def plan_for_memory(self, batch: int, bytes_budget: int, cfg: float = 1.5,
                        transient_last_scale: bool = False) -> DepthPlan | None:
        """The deepest subnet, then the latest switch scale, whose KV cache for `batch` images fits.

        Returns None when the full network fits; raises InputError when nothing does. Pass
        transient_last_scale when generating with it (the budget then covers its lower peak).
        """
        if batch < 1 or bytes_budget <= 0:
            raise InputError(f"batch must be >= 1 and the budget > 0 bytes, got {batch}, {bytes_budget}")
        D, K = self.config.depth, self.config.transformer.num_scales
        def fits(plan: DepthPlan | None) -> bool:
            return batch * self.kv_bytes_per_image(cfg, plan, transient_last_scale) <= bytes_budget

        if fits(None):
            return None
        for depth in range(D - 1, 0, -1):
            for switch in range(K, 0, -1):
                plan = DepthPlan(D, depth, switch, self.config.patch_nums)
                if fits(plan):
                    return plan
        smallest = batch * self.kv_bytes_per_image(cfg, DepthPlan(D, 1, 1, self.config.patch_nums),
                                                   transient_last_scale)
        raise InputError(f"no depth plan fits {bytes_budget:,} bytes for batch {batch} "
                         f"(the smallest needs {smallest:,}); lower the batch size")

    # ------------------------------------------------------------------ generation
    def kv_bytes_per_image(self, cfg: float = 1.5, layer_plan: LayerPlan | None = None,
                           transient_last_scale: bool = False) -> int:
        """Analytic peak KV-cache bytes for one image (CFG doubles the rows unless cfg == 0).

        With transient_last_scale the peak is the larger of the cache at the start and, at the
        final scale, the layers still held plus one layer's full-length keys/values.
        """
        t = self.config.transformer
        last = last_run_scales(layer_plan, t.depth, t.num_scales)
        caps = layer_capacities(last, [e for _, e in t.scale_ranges()], transient_last_scale)
        entries = sum(caps)
        if transient_last_scale:
            held = sum(c for c, s in zip(caps, last) if s == t.num_scales - 1)
            entries = max(entries, held + t.num_tokens)
        return analytic_kv_bytes(batch=1, embed_dim=t.embed_dim, capacities=[entries], cfg_factor=2 if cfg else 1,
                                 dtype=self.transformer.pos_1LC.dtype)

    @_serialized
    @_with_adapter
    @torch.no_grad()
    def generate(self, labels: int | str | Iterable[int | str] | torch.Tensor | None = None, *,
                 batch: int | None = None, seed: int | Sequence[int] | None = None, cfg: float = 1.5,
                 top_k: int = 900,
                 top_p: float = 0.96, more_smooth: bool = False, depth: int | None = None,
                 switch_scale: int | None = None, finish_scale: int | None = None,
                 layer_plan: LayerPlan | None = None,
                 hooks: Sequence[ScaleHook] = (), transient_last_scale: bool = False,
                 precision: str = "fp32", decode: bool = True, draw: str = "release",
                 search: str | TTSConfig | BestOfNConfig | None = None, budget: float | None = None,
                 reward: Reward | str | None = None, forcer: TokenForcer | None = None) -> GenerateOutput:
        """Sample class-conditional images. Returns images in [0, 1], tokens and timing/memory stats.

        With labels=None, `batch` random classes are drawn first from the seeded generator.
        seed: an int (one generator, the release's protocol) or one int per sample (each image is
        then independent of the rest of the batch); None picks a random seed, returned as out.seed.
        depth/switch_scale: run the depth-`depth` subnet after the first `switch_scale` scales
        (same weights, nothing reloaded); finish_scale: full depth again from that scale (the earlier
        scales are re-run at full depth for the population that reaches it: with a search, its survivors);
        layer_plan: any custom LayerPlan instead.
        transient_last_scale: keep the final scale's keys/values out of the KV cache (less memory).
        precision: 'fp32' (reference), or 'bf16'/'fp16' autocast for the transformer and the decoder.
        draw: 'release' (the official code's filtering and multinomial draw: its tokens for a seed) or
        'fast' (the same distribution with less sampling work; other tokens for a seed).
        search: 'tts' (TTS-VAR), 'best_of_n' or a TTSConfig/BestOfNConfig: each label's image is the best
        of a search costing `budget` plain full-depth samples of transformer compute (default 4), scored
        by `reward`: a callable, or 'latent' / 'evaluator' / 'imagenet' / 'auto' for the shipped scorers
        (`search_scorer`; 'auto', the default, steers with the decode-free latent reward where shipped and
        picks the winner with the evaluator); works with depth plans, whose cheaper scales buy more
        candidates. out.search holds the trace.
        forcer: a TokenForcer (sampling.forcing) that teacher-forces tokens at each scale (see `edit`).
        adapter: a subject adapter (path or `Adapter`) for this call only (see `using_adapter`).
        Raises InputError/ConfigError for bad ids or settings.
        """
        settings = SamplingConfig(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, draw=draw)
        autocast = self.autocast(precision)
        if depth is not None or switch_scale is not None or finish_scale is not None:
            if layer_plan is not None:
                raise InputError("give either depth/switch_scale/finish_scale or layer_plan, not both")
            layer_plan = self.depth_plan(depth, switch_scale, finish_scale)
        if seed is None:
            seed = secrets.randbelow(2**32)  # picked here so that out.seed reproduces the call
        generator = self.make_generators(seed)
        if labels is None:
            if isinstance(generator, list):
                raise InputError("per-sample seeds need explicit labels")
            if batch is None or isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise InputError("give labels, or batch >= 1 to draw random classes")
            uniform = torch.full((1, self.config.num_classes), 1.0 / self.config.num_classes, device=self.device)
            labels_B = torch.multinomial(uniform, batch, replacement=True, generator=generator).view(batch)
        else:
            labels_B = self.parse_labels(labels).to(self.device)
            if batch is not None and batch != labels_B.numel():
                raise InputError(f"batch={batch} but {labels_B.numel()} labels were given")
            if isinstance(generator, list) and len(generator) != labels_B.numel():
                raise InputError(f"{len(generator)} seeds for {labels_B.numel()} labels")
        groups, plan = None, None
        if search is not None:
            scorer = reward if isinstance(reward, str) else "auto"
            default_reward, default_features = self.search_scorer(scorer)
            # 'auto': the decode-free scorer steers the search, the evaluator (where shipped) picks the winner
            final = self.search_scorer("evaluator")[0] if scorer == "auto" else None
            plan = plan_search(search, self.config.transformer, labels_B, generator, budget=budget,
                               reward=None if isinstance(reward, str) else reward, default_reward=default_reward,
                               default_features=default_features, default_final_reward=final, layer_plan=layer_plan)
            labels_B, groups, generator, hooks = plan.labels, plan.groups, plan.generators, [*hooks, plan.hook]
        elif budget is not None or reward is not None:
            raise InputError("budget and reward belong to a search: add search='tts' or 'best_of_n'")
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        with autocast:
            result = sample(self.transformer, self.tokenizer.quantize, labels_B, settings, generator=generator,
                            layer_plan=layer_plan, hooks=hooks, transient_last_scale=transient_last_scale,
                            runner=self.runner, decoder=self.decode_fhat, groups=groups,
                            forcer=forcer)
        t1 = time.perf_counter()
        images = None
        if decode:
            images = result.images
            if images is None:
                with autocast:
                    images = self.decode_fhat(result.f_hat)
            if cuda:
                torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        stats = GenerationStats(seconds=t2 - t0, transformer_seconds=t1 - t0, decode_seconds=t2 - t1,
                                kv_bytes=result.kv_peak_bytes, per_scale=result.per_scale,
                                peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
                                hook_seconds=sum(s.hook_seconds for s in result.per_scale), decodes=result.decodes,
                                compute=self.transformer_compute(result.per_scale),
                                search_overhead_seconds=plan.trace.overhead_seconds if plan else 0.0)
        return GenerateOutput(images, result.tokens, result.labels, stats, plan.trace if plan else None,
                              seed=list(seed) if isinstance(seed, (list, tuple)) else seed)

    @_serialized
    @_with_adapter
    @torch.no_grad()
    def edit(self, images: Any, mask: Any, labels: int | str | Iterable[int | str] | torch.Tensor | None = None, *,
             num: int = 1, seed: int | Sequence[int] | None = None, cfg: float = 1.5, top_k: int = 900,
             top_p: float = 0.96, more_smooth: bool = False, depth: int | None = None,
             switch_scale: int | None = None, finish_scale: int | None = None,
             layer_plan: LayerPlan | None = None, transient_last_scale: bool = False, precision: str = "fp32",
             draw: str = "release", search: str | TTSConfig | BestOfNConfig | None = None,
             budget: float | None = None, reward: Reward | str | None = None,
             config: EditConfig | None = None) -> GenerateOutput:
        """Regenerate the masked region of images: zero-shot in-painting, out-painting, class-conditional editing.

        images: (B, 3, H, W) / (3, H, W) in [0, 1] (uint8 0..255 too), (H, W, 3|4) arrays, PIL images or a list;
        another size than the model's is resized (with a logged note). mask: (B, 1, H, W), (B, H, W) or (H, W),
        1 = regenerate (`editing.outpaint_canvas` and `editing.mask_from_editor` build inputs for out-painting
        and image editors). labels: None (or -1/'null') in-paints without a class; a class (one, or one per
        image) edits toward it. num: results per image (rows image-major). The tokens outside the mask are
        teacher-forced at every scale; config (EditConfig) chooses the mechanics and the paste-back of the kept
        pixels (default: the best measured in bench.edit). The other options are generate's (adapter= too). Returns
        generate's output at the model's size; out.tokens hold the forced tokens where the input was kept.
        Raises InputError for bad images or masks (wrong shape, NaN, empty or covering the whole image).
        """
        t0 = time.perf_counter()
        config = EditConfig() if config is None else config
        if not isinstance(config, EditConfig):
            raise InputError(f"config must be an EditConfig, got {type(config).__name__}")
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise InputError(f"num must be an integer >= 1, got {num!r}")
        images_t = image_batch(images)
        mask_t = mask_batch(mask, images_t.shape[0], tuple(images_t.shape[-2:]))
        images_t, mask_t = fit_to_model(images_t, mask_t, self.config.image_size)
        check_mask_covers(mask_t)
        R = images_t.shape[0]
        if labels is None:
            labels_R = torch.full((R,), -1, dtype=torch.long)
        else:
            labels_R = self.parse_labels(labels)
            if labels_R.numel() == 1:
                labels_R = labels_R.expand(R)
            elif labels_R.numel() != R:
                raise InputError(f"{labels_R.numel()} labels for {R} images (give one label, or one per image)")
            labels_R = torch.where(labels_R == self.config.num_classes, -1, labels_R)
        if bool((labels_R == -1).all()):
            cfg = 0.0  # both guidance halves would be the unconditional one: the same draws at half the work
        images_t = images_t.repeat_interleave(num, 0).to(self.device)
        mask_t = mask_t.repeat_interleave(num, 0).to(self.device)
        latent = self.tokenizer.encode_latent(images_t * 2 - 1).float()  # (R * num, C, h, w)
        forcer = EditForcer(self.tokenizer.quantize, latent, mask_t, config)
        prepare_seconds = time.perf_counter() - t0
        out = self.generate(labels_R.repeat_interleave(num), seed=seed, cfg=cfg, top_k=top_k, top_p=top_p,
                            more_smooth=more_smooth, depth=depth, switch_scale=switch_scale,
                            finish_scale=finish_scale, layer_plan=layer_plan,
                            transient_last_scale=transient_last_scale, precision=precision, draw=draw,
                            search=search, budget=budget, reward=reward, forcer=forcer)
        t1 = time.perf_counter()
        if config.paste_back and out.images is not None:
            out.images = paste_back(out.images, images_t, keep_alpha(mask_t, config.feather, config.feather_position))
        out.stats.seconds += prepare_seconds + time.perf_counter() - t1
        return out

    def search_scorer(self, name: str = "auto") -> tuple[Reward | None, object | None]:
        """The shipped (reward, clustering features) of a search: 'latent' (no decode: the latent reward and
        pooled latents), 'evaluator' (decoded partial images scored by the evaluator), 'auto' (latent when
        the checkpoint ships a latent reward, else evaluator; for a 1,000-class model with neither, imagenet
        when `var-engine[imagenet]` is installed), 'imagenet' (EfficientNet-Lite0, search.imagenet)."""
        return shipped_scorer(name, self.components, self.config.num_classes, self.device)

    def transformer_compute(self, per_scale: Sequence[ScaleStats]) -> float:
        """Transformer compute of a call's scale records, in plain full-depth samples (search.compute)."""
        return run_cost(self.config.transformer, [s.batch for s in per_scale], [s.layers for s in per_scale],
                        [s.refilled for s in per_scale])

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Accumulated latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1] (float32)."""
        return self.tokenizer.fhat_to_images(f_hat).float().add_(1).mul_(0.5)

    # ------------------------------------------------------------------ subject adapters
    _adapters: "AdapterSwitch | None" = None
    _loaded_adapter: "Adapter | None" = None

    def _adapter_switch(self) -> "AdapterSwitch":
        from .finetune import AdapterSwitch

        if self._adapters is None:
            self._adapters = AdapterSwitch(self.transformer)
        return self._adapters

    @_serialized
    def check_adapter(self, adapter: "str | Path | Adapter") -> "Adapter":
        """Read an adapter and check it against this base model without putting it in place (CheckpointError
        as in `load_adapter`); pass the result to `generate(..., adapter=...)`."""
        return self._adapter_switch().load(adapter)

    @_serialized
    def load_adapter(self, adapter: "str | Path | Adapter") -> "Adapter":
        """Load a subject adapter (`var-engine finetune` output) on top of the base weights until
        `unload_adapter`; replaces any loaded one. CheckpointError for a file made for another base model,
        a truncated file or tensors that do not fit. Its subject's class id: `adapter.class_id`."""
        switch = self._adapter_switch()
        loaded = switch.load(adapter)
        switch.apply(loaded)
        self._loaded_adapter = loaded
        return loaded

    @_serialized
    def unload_adapter(self) -> None:
        """Back to the base weights, bit for bit."""
        if self._adapters is not None:
            self._adapters.apply(None)
        self._loaded_adapter = None

    @property
    def adapter(self) -> "Adapter | None":
        """The adapter loaded with `load_adapter` (None: the base model)."""
        return self._loaded_adapter

    @contextlib.contextmanager
    def using_adapter(self, adapter: "str | Path | Adapter | None"):
        """Generate with `adapter` (None: the base model) inside the block, e.g. for one web session's subject;
        holds the generation lock, so other threads' calls run before or after, each with its own weights."""
        with self.generation_lock:
            switch = self._adapter_switch()
            checked = None if adapter is None else switch.load(adapter)
            previous = switch.active  # an enclosing block's adapter, the loaded one, or None
            switch.apply(checked)
            try:
                yield checked
            finally:
                switch.apply(previous)

    def adapter_class_ids(self) -> list[int]:
        """Class ids past the null class that the adapter in place adds (a new subject's id is num_classes + 1)."""
        return self._adapters.new_class_ids() if self._adapters is not None else []

    def num_parameters(self) -> dict[str, int]:
        return {"tokenizer": sum(p.numel() for p in self.tokenizer.parameters()),
                "transformer": sum(p.numel() for p in self.transformer.parameters())}
