"""Reading and writing weights: official VAR releases and var-engine's own format.

Official files are bare state dicts (`.pth`, read with `torch.load(weights_only=True)`) or
safetensors; `hf://owner/repo/file` sources go through `huggingface_hub` when it is installed.
var-engine's own checkpoints are a directory: `config.json`, `tokenizer.safetensors`,
`transformer.safetensors`, plus optional extra components (e.g. `evaluator.safetensors`).
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import ModelConfig, TokenizerConfig, TransformerConfig
from .errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT_NAME = "var-engine"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- reading files
def resolve_source(source: str | Path) -> Path:
    """A local path, or `hf://owner/repo/path/in/repo` downloaded through huggingface_hub."""
    text = str(source)
    if text.startswith("hf://"):
        parts = text[len("hf://"):].split("/")
        if len(parts) < 3:
            raise CheckpointError(f"hub source must look like hf://owner/repo/file, got {text!r}")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as e:
            raise CheckpointError(
                f"{text}: huggingface_hub is not installed (pip install huggingface_hub), "
                "or download the file and pass its local path") from e
        try:
            return Path(hf_hub_download(repo_id="/".join(parts[:2]), filename="/".join(parts[2:])))
        except Exception as e:  # network, auth, missing file: all reported the same way
            raise CheckpointError(f"could not download {text}: {type(e).__name__}: {e}. "
                                  "Offline? Download the file elsewhere and pass its local path.") from e
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return path


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict from safetensors or a `.pth` (never unpickling arbitrary objects)."""
    path = resolve_source(source)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load: the file holds objects other than tensors "
                              f"(only plain state dicts are accepted): {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        hint = " (a training checkpoint? pass the model's state dict)" if any(k in obj for k in ("model", "state_dict", "trainer")) else ""
        raise CheckpointError(f"{path}: not a plain state dict: entries {bad[:5]} are not tensors{hint}")
    return dict(obj)


# ----------------------------------------------------------------------------- inferring configs
def _require(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"not a {what} state dict: key {key!r} is missing")
    return sd[key]


def infer_transformer_config(sd: Mapping[str, torch.Tensor], patch_nums: tuple[int, ...],
                             num_heads: int | None = None) -> TransformerConfig:
    """Depth, width, classes, vocabulary, shared AdaLN and attn_l2_norm from an official state dict."""
    word = _require(sd, "word_embed.weight", "VAR transformer")
    C, z_channels = word.shape
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth < 1:
        raise CheckpointError("not a VAR transformer state dict: no 'blocks.N.*' keys")
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    if l2:
        heads_in_file = sd["blocks.0.attn.scale_mul_1H11"].shape[1]
        if num_heads is not None and num_heads != heads_in_file:
            raise CheckpointError(f"num_heads={num_heads} but the checkpoint has {heads_in_file} heads")
        num_heads = heads_in_file
    hidden = _require(sd, "blocks.0.ffn.fc1.weight", "VAR transformer").shape[0]
    L = _require(sd, "pos_1LC", "VAR transformer").shape[1]
    expected_L = sum(p * p for p in patch_nums)
    if L != expected_L:
        raise CheckpointError(f"checkpoint has {L} token positions but patch_nums {tuple(patch_nums)} "
                              f"give {expected_L}; pass the patch_nums it was trained with")
    try:
        return TransformerConfig(
            depth=depth, embed_dim=C, num_heads=num_heads or depth,
            num_classes=_require(sd, "class_emb.weight", "VAR transformer").shape[0] - 1,
            mlp_ratio=hidden / C, shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=l2,
            vocab_size=_require(sd, "head.weight", "VAR transformer").shape[0], z_channels=z_channels,
            patch_nums=tuple(patch_nums))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint does not describe a valid transformer: {e}") from e


def infer_tokenizer_config(sd: Mapping[str, torch.Tensor], patch_nums: tuple[int, ...],
                           quant_resi: float = 0.5, norm_groups: int = 32) -> TokenizerConfig:
    """Channels, ch_mult, codebook and phi sharing from an official VQVAE state dict."""
    emb = _require(sd, "quantize.embedding.weight", "VQVAE")
    ch = _require(sd, "encoder.conv_in.weight", "VQVAE").shape[0]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
    blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
    if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in sd):
        share = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k)))
    elif any(k.startswith("quantize.quant_resi.qresi.") for k in sd):
        share = 1
    elif any(re.match(r"quantize\.quant_resi\.\d+\.", k) for k in sd):
        share = 0
    else:  # quant_resi == 0: identity phis, no weights
        share, quant_resi = 4, 0.0
    try:
        return TokenizerConfig(
            vocab_size=emb.shape[0], z_channels=emb.shape[1], ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
            using_sa=f"encoder.down.{levels - 1}.attn.0.norm.weight" in sd,
            using_mid_sa="encoder.mid.attn_1.norm.weight" in sd, norm_groups=norm_groups,
            quant_conv_ks=_require(sd, "quant_conv.weight", "VQVAE").shape[-1],
            quant_resi=quant_resi, share_quant_resi=share, patch_nums=tuple(patch_nums))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint does not describe a valid tokenizer: {e}") from e


# ----------------------------------------------------------------------------- loading into modules
def adapt_tokenizer_state_dict(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The training-only `quantize.ema_vocab_hit_SV` may have another row count: replace it.

    Returns `sd` unchanged for modules without that buffer.
    """
    key = "quantize.ema_vocab_hit_SV"
    own = model.state_dict().get(key)
    if own is not None and key in sd and sd[key].shape != own.shape:
        sd = {**sd, key: torch.zeros(own.shape, dtype=own.dtype)}
    return sd


def load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load with a CheckpointError listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {unexpected[:5]}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(f"{what} checkpoint does not fit the model: " + "; ".join(parts))
    params = dict(model.named_parameters())
    for k, v in sd.items():  # amax propagates NaN and inf, and is several times cheaper than isfinite().all()
        if k in params and v.numel() and not torch.isfinite(v.float().abs().amax()):
            raise CheckpointError(f"{what} checkpoint holds NaN/inf values in {k!r}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))


# ----------------------------------------------------------------------------- own format
def write_tensors(directory: Path, name: str, module: nn.Module, dtype: torch.dtype | None = None) -> Path:
    """Atomically write a module's state dict as `<name>.safetensors` (floats cast to `dtype` if given)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
          for k, v in module.state_dict().items()}
    tmp = directory / f".{name}.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": FORMAT_NAME})
    tmp.replace(directory / f"{name}.safetensors")
    return directory / f"{name}.safetensors"


def save_pretrained(directory: str | Path, config: ModelConfig, components: Mapping[str, nn.Module],
                    extra_config: Mapping[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write `config.json` and one `<name>.safetensors` per component (floats cast to `dtype` if given)."""
    directory = Path(directory)
    for name, module in components.items():
        write_tensors(directory, name, module, dtype)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config.to_dict(),
            "components": sorted(set(components) | set(_existing_components(directory))),
            **dict(extra_config or {})}
    tmp = directory / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(directory / CONFIG_FILE)
    return directory


def _existing_components(directory: Path) -> list[str]:
    return [p.name[: -len(".safetensors")] for p in directory.glob("*.safetensors")]


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a var-engine checkpoint directory."""
    directory = Path(directory).expanduser()
    return _read_json(directory / CONFIG_FILE, f"{directory} is not a var-engine checkpoint: {CONFIG_FILE} not found")


def read_model_config(directory: str | Path, meta: dict[str, Any] | None = None) -> ModelConfig:
    """The model config of a checkpoint directory (from `meta` when its config.json was already read)."""
    meta = read_pretrained_config(directory) if meta is None else meta
    try:
        return ModelConfig.from_dict(meta)
    except ConfigError as e:
        raise CheckpointError(f"{directory}: {e}") from e


def read_component(directory: str | Path, name: str) -> dict[str, torch.Tensor]:
    """One component's tensors from a checkpoint directory."""
    path = Path(directory).expanduser() / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{directory}: component {name!r} not found ({path.name})")
    return read_state_dict(path)


# ----------------------------------------------------------------------------- single components
def load_component(module: nn.Module, directory: str | Path, name: str) -> nn.Module:
    """Strictly load `<name>.safetensors` of a checkpoint directory into `module`."""
    load_weights(module, adapt_tokenizer_state_dict(read_component(directory, name), module), name)
    return module


def save_module(directory: str | Path, name: str, module: nn.Module, config: Mapping[str, Any],
                dtype: torch.dtype | None = None) -> Path:
    """Write `<name>.safetensors` (floats cast to `dtype` if given) and `<name>.json` (its config)."""
    directory = Path(directory)
    write_tensors(directory, name, module, dtype)
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **dict(config)}, indent=1))
    tmp.replace(directory / f"{name}.json")
    return directory


def read_module_config(directory: str | Path, name: str) -> dict[str, Any]:
    """The JSON config written beside `<name>.safetensors` by `save_module`."""
    meta = _read_json(Path(directory).expanduser() / f"{name}.json", f"{directory}: {name}.json not found")
    meta.pop("format", None)
    meta.pop("format_version", None)
    return meta


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    """A var-engine JSON file (its `format` field checked); CheckpointError with `missing` if absent."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a var-engine config (format field missing or wrong)")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta['format_version']} is newer than this "
                              f"var-engine understands ({FORMAT_VERSION}); upgrade var-engine")
    return meta


# ----------------------------------------------------------------------------- adapters
ADAPTER_FORMAT = "var-engine-adapter"
ADAPTER_VERSION = 1
CLASS_ROWS_KEY = "class_emb.rows"  # (R, C): the class-embedding rows an adapter sets, ids in meta["class_rows"]
LORA_SUFFIXES = (".lora_A", ".lora_B")  # a low-rank update W + (B @ A) * meta["lora_scale"]


def model_fingerprint(module: nn.Module, samples: int = 4096) -> str:
    """A short hash identifying a module's weights: every parameter's name, shape and an evenly strided
    sample of its values (as float32), so that it is cheap even for large models and independent of device."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        flat = p.detach().reshape(-1)
        picked = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu().contiguous()
        h.update(f"{name}:{tuple(p.shape)};".encode())
        h.update(picked.numpy().tobytes())
    return h.hexdigest()[:32]


class Adapter:
    """A subset of a transformer's tensors (full tensors, low-rank updates, class rows) with its metadata.

    meta: base_fingerprint (the model it was made for), class_id (the subject's id), class_rows (ids of the
    class-embedding rows it sets), new_class, groups, rank, lora_scale, settings.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]):
        self.tensors = dict(tensors)
        self.meta = dict(meta)
        missing = [k for k in ("base_fingerprint", "class_id", "class_rows") if k not in self.meta]
        if missing:
            raise CheckpointError(f"adapter metadata lacks {missing}")
        rows, class_id, scale = self.meta["class_rows"], self.meta["class_id"], self.meta.get("lora_scale", 1.0)
        if not isinstance(rows, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                 for i in rows):
            raise CheckpointError(f"adapter metadata: class_rows must be a list of class ids, got {rows!r:.80}")
        if isinstance(class_id, bool) or not isinstance(class_id, int) or class_id < 0:
            raise CheckpointError(f"adapter metadata: class_id must be a class id, got {class_id!r:.80}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or not 0 <= scale <= 1e3:
            raise CheckpointError(f"adapter metadata: lora_scale must be a finite number in [0, 1000], got {scale!r:.80}")
        if not isinstance(self.meta["base_fingerprint"], str):
            raise CheckpointError("adapter metadata: base_fingerprint must be a string")

    @property
    def class_id(self) -> int:
        return int(self.meta["class_id"])

    @property
    def class_rows(self) -> list[int]:
        return [int(i) for i in self.meta["class_rows"]]

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def check_fits(self, shapes: Mapping[str, torch.Size], num_classes: int, fingerprint: str | None) -> None:
        """Refuse an adapter made for another base model (fingerprint), unknown keys or wrong shapes.

        shapes: the base transformer's parameter shapes by name; num_classes: its class count.
        """
        if fingerprint is not None and self.meta["base_fingerprint"] != fingerprint:
            raise CheckpointError("this adapter was made for another base model (its base fingerprint "
                                  f"{self.meta['base_fingerprint']} differs from this model's {fingerprint}); "
                                  "fine-tune again on this model")
        bad = []
        for key, t in self.tensors.items():
            if key == CLASS_ROWS_KEY:
                width = shapes["class_emb.weight"][1]
                if t.ndim != 2 or t.shape != (len(self.class_rows), width):
                    bad.append(f"{key}: {tuple(t.shape)} for {len(self.class_rows)} rows of width {width}")
                continue
            base = key[: -len(".lora_A")] if key.endswith(LORA_SUFFIXES) else key
            if base not in shapes:
                bad.append(f"{key}: no such parameter in the model")
            elif key.endswith(".lora_A"):
                partner = self.tensors.get(base + ".lora_B")
                if t.ndim != 2 or len(shapes[base]) != 2 or t.shape[1] != shapes[base][1] or partner is None \
                        or tuple(partner.shape) != (shapes[base][0], t.shape[0]):
                    bad.append(f"{key}: low-rank pair does not fit {tuple(shapes[base])}")
            elif key.endswith(".lora_B"):
                if base + ".lora_A" not in self.tensors:
                    bad.append(f"{key}: lora_A missing")
            elif tuple(t.shape) != tuple(shapes[base]):
                bad.append(f"{key}: file {tuple(t.shape)} vs model {tuple(shapes[base])}")
        rows = self.class_rows
        new = sorted(i for i in rows if i > num_classes)
        if any(i < 0 or i == num_classes for i in rows) or new != list(range(num_classes + 1, num_classes + 1 + len(new))):
            bad.append(f"class rows {rows} do not fit a model of {num_classes} classes (new ids start at "
                       f"{num_classes + 1}, {num_classes} is the null class)")
        if rows and CLASS_ROWS_KEY not in self.tensors:
            bad.append(f"{CLASS_ROWS_KEY} missing")
        for key, t in self.tensors.items():
            if t.is_floating_point() and t.numel() and not torch.isfinite(t.float().abs().amax()):
                bad.append(f"{key}: NaN/inf values")
        if bad:
            raise CheckpointError("adapter does not fit the model: " + "; ".join(bad[:5]))


def save_adapter(path: str | Path, adapter: Adapter, dtype: torch.dtype | None = None) -> Path:
    """Atomically write an adapter as safetensors (its metadata as JSON in the header; floats cast to `dtype`)."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.parent and not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in adapter.tensors.items()}
    meta = {"format": ADAPTER_FORMAT, "format_version": str(ADAPTER_VERSION), "adapter": json.dumps(adapter.meta)}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_adapter(path: str | Path) -> Adapter:
    """Read an adapter file (tensors as float32); CheckpointError for a missing, truncated or foreign file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable adapter file (truncated or not safetensors: {e})") from e
    if header.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path}: not a var-engine adapter (format {header.get('format')!r})")
    if int(header.get("format_version", "0")) > ADAPTER_VERSION:
        raise CheckpointError(f"{path}: adapter format version {header['format_version']} is newer than this "
                              "var-engine understands; upgrade var-engine")
    try:
        meta = json.loads(header.get("adapter", ""))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid adapter metadata ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: invalid adapter metadata")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    adapter = Adapter(tensors, meta)
    adapter.meta["path"] = str(path)
    return adapter
