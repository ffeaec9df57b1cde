"""The Gradio app: Generate (with test-time search and VARiant depth plans), About; `/generate` API."""
from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from var_engine.class_names import class_label, short_name
from var_engine.errors import VarEngineError
from var_engine.pipeline import GenerateOutput, Pipeline

from .validation import SEARCH_MODES, Limits, parse_request

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry, no version check
import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)

CSS = "#gallery img, #previews img { image-rendering: pixelated; }"
QUEUE_FULL = "The server is busy: its queue is full. Please try again in a moment."


@dataclass
class ServeSettings:
    """How the app serves: where, how many requests at once, how many may wait, what one may ask."""

    host: str = "127.0.0.1"
    port: int | None = 7860  # None: the first free port from 7860
    concurrency: int = 1  # requests generating at once (the pipeline runs one generation at a time)
    queue_size: int = 16  # requests waiting; more are refused with a "queue is full" message
    limits: Limits = Limits()
    preview: bool = True  # stream the coarse-to-fine images of the first sample while it generates

    def __post_init__(self) -> None:
        if self.port is not None and (isinstance(self.port, bool) or not 0 < self.port < 65536):
            raise VarEngineError(f"port must be in [1, 65535], got {self.port}")
        if self.concurrency < 1 or self.queue_size < 1:
            raise VarEngineError(f"concurrency and queue size must be >= 1, got {self.concurrency}, {self.queue_size}")


def offline_theme() -> gr.themes.Base:
    """The default look with system fonts only (nothing fetched from a font service)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] -> B arrays (H, W, 3) uint8."""
    return list(images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def write_png(image: np.ndarray, folder: Path, name: str) -> str:
    """Write one image once, under a name of our own (Gradio copies it into its cache atomically)."""
    path = folder / f"{name}.png"
    Image.fromarray(image).save(path)
    return str(path)


class Demo:
    """Request handlers around one pipeline; no state is kept between requests."""

    def __init__(self, pipe: Pipeline, settings: ServeSettings):
        self.pipe, self.settings = pipe, settings
        self.names = pipe.class_names
        self.workdir = Path(tempfile.mkdtemp(prefix="var-engine-serve-"))  # result PNGs, one folder per request
        atexit.register(shutil.rmtree, self.workdir, True)

    def choices(self) -> list[str]:
        return [class_label(i, self.names) for i in range(len(self.names))]

    def generate(self, class_: Any, num_images: Any = 1, seed: Any = 0, cfg: Any = 1.5, top_k: Any = 900,
                 top_p: Any = 0.96, more_smooth: Any = False, randomize_seed: Any = False, depth: Any = None,
                 switch_scale: Any = None, memory_budget_mib: Any = 0, search: Any = "off",
                 budget: Any = 4.0) -> Iterator[tuple]:
        """Yields (gallery, previews, stats, seed): previews after each scale of the first sample, then all."""
        try:
            req = parse_request(self.pipe, self.settings.limits, class_, num_images, seed, cfg, top_k, top_p,
                                more_smooth, randomize_seed, depth, switch_scale, memory_budget_mib, search, budget)
            if req.memory_budget_bytes is not None:
                plan = self.pipe.plan_for_memory(req.num_images, req.memory_budget_bytes, cfg=req.cfg)
            else:
                plan = self.pipe.depth_plan(req.depth, req.switch_scale)
        except VarEngineError as e:
            raise gr.Error(str(e), print_exception=False) from None
        previews: list[tuple[str, str]] = []
        events: queue.Queue = queue.Queue()
        hooks = [PreviewHook(self.pipe, events)] if self.settings.preview and req.search is None else []

        def work() -> None:
            try:
                out = self.pipe.generate(**req.generate_kwargs(), layer_plan=plan, hooks=hooks)
                events.put(("done", out))
            except BaseException as e:  # noqa: BLE001  (reported to the client below)
                events.put(("error", e))

        threading.Thread(target=work, name="var-engine-generate", daemon=True).start()
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            while True:
                kind, value = events.get()
                if kind == "preview":
                    scale, image = value
                    previews.append((write_png(image, folder, f"scale{scale}"),
                                     f"scale {scale + 1}/{self.pipe.config.transformer.num_scales}"))
                    yield gr.skip(), list(previews), gr.skip(), gr.skip()
                elif kind == "error":
                    raise self.client_error(value)
                else:
                    out: GenerateOutput = value
                    caption = "unconditional" if req.label == -1 else short_name(self.names[req.label])
                    gallery = [(write_png(img, folder, f"image{i}"), caption)
                               for i, img in enumerate(to_uint8(out.images))]
                    yield gallery, list(previews), self.stats(req, out, plan), out.seed
                    return
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def stats(self, req, out: GenerateOutput, plan) -> dict[str, Any]:
        s = out.stats
        stats = {"seed": out.seed, "class": req.label, "images": int(out.images.shape[0]),
                 "seconds": round(s.seconds, 4), "transformer_seconds": round(s.transformer_seconds, 4),
                 "decode_seconds": round(s.decode_seconds, 4), "kv_bytes": s.kv_bytes,
                 "depth_plan": ({"depth": plan.depth, "switch_scale": plan.switch_scale} if plan is not None
                                else {"depth": self.pipe.config.depth, "switch_scale": None}),
                 "layers_per_scale": [p.layers for p in s.per_scale], "compute": round(s.compute, 4)}
        if out.search is not None:
            stats["search"] = {"mode": req.search, "budget": req.budget, "batches": list(out.search.batches),
                               "winner_scores": [round(float(x), 4) for x in out.search.winner_scores],
                               "overhead_seconds": round(s.search_overhead_seconds, 4)}
        return stats

    @staticmethod
    def client_error(e: BaseException) -> gr.Error:
        """An exception from generation as a message for the client (never a traceback)."""
        if isinstance(e, VarEngineError):
            return gr.Error(str(e), print_exception=False)
        if isinstance(e, torch.OutOfMemoryError):
            return gr.Error("out of memory: ask for fewer images or set a memory budget", print_exception=False)
        log.error("generation failed", exc_info=e)
        return gr.Error(f"generation failed ({type(e).__name__}); the server log has the details",
                        print_exception=False)

    def about(self) -> str:
        """The model card (checkpoint README) and the model's numbers, as markdown."""
        pipe, t = self.pipe, self.pipe.config.transformer
        params = pipe.num_parameters()
        lines = [f"**Model**: depth {t.depth}, width {t.embed_dim}, {t.num_heads} heads, {t.num_classes} classes, "
                 f"vocabulary {t.vocab_size}, scales {', '.join(map(str, t.patch_nums))}, "
                 f"{pipe.config.image_size}px images",
                 f"**Parameters**: transformer {params['transformer'] / 1e6:.2f}M, "
                 f"tokenizer {params['tokenizer'] / 1e6:.2f}M",
                 f"**KV cache per image**: {pipe.kv_bytes_per_image(cfg=1.5) / 2**20:.2f} MiB with CFG"]
        card = Path(pipe.meta.get("path", "")) / "README.md" if pipe.meta.get("path") else None
        text = "\n\n".join(lines)
        if card is not None and card.is_file():
            body = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", card.read_text(encoding="utf-8"))  # images shown apart
            text += "\n\n---\n\n" + body
        return text


class PreviewHook:
    """After each scale, decode the first sample's partial latent and hand it to the request's queue."""

    def __init__(self, pipe: Pipeline, events: queue.Queue):
        self.pipe, self.events = pipe, events

    def after_scale(self, step) -> None:
        image = self.pipe.decode_fhat(step.f_hat_BChw[:1].float())
        self.events.put(("preview", (step.scale_index, to_uint8(image)[0])))
        return None


def build_app(pipe: Pipeline, settings: ServeSettings | None = None) -> gr.Blocks:
    """The Blocks app (queue configured); launch() or `launch(pipe, settings)` serves it."""
    settings = settings or ServeSettings()
    demo_ = Demo(pipe, settings)
    t = pipe.config.transformer
    names = pipe.class_names
    # delete_cache: every 10 minutes, cached result files older than an hour go (a long-running server stays small)
    with gr.Blocks(title="var-engine", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"# var-engine\nClass-conditional VAR (next-scale prediction): {t.num_classes} classes, "
                    f"{pipe.config.image_size}px.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    class_ = gr.Dropdown(demo_.choices(), value=demo_.choices()[min(3, len(names) - 1)], label="Class",
                                         allow_custom_value=True, elem_id="class")
                    num = gr.Slider(1, settings.limits.max_images, value=min(8, settings.limits.max_images),
                                    step=1, label="Number of images")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=None, minimum=-1, elem_id="seed")
                        randomize = gr.Checkbox(False, label="Random seed")
                    cfg = gr.Slider(0, settings.limits.max_cfg, value=1.5, step=0.1, label="CFG")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Accordion("Sampling", open=False):
                        top_k = gr.Slider(0, t.vocab_size, value=min(900, t.vocab_size), step=1,
                                          label="Top-k (0: off)")
                        top_p = gr.Slider(0, 1, value=0.96, step=0.01, label="Top-p (0: off)")
                        smooth = gr.Checkbox(False, label="Gumbel smoothing")
                    with gr.Accordion("VARiant depth", open=False):
                        depth = gr.Slider(1, t.depth, value=t.depth, step=1,
                                          label=f"Depth after the switch scale ({t.depth}: full network)")
                        switch = gr.Slider(1, t.num_scales, value=pipe.default_switch_scale(), step=1,
                                           label="Switch scale (scales run at full depth)")
                        budget_mib = gr.Number(0, label="Or a KV memory budget in MiB (0: off)", minimum=0)
                    with gr.Accordion("Test-time search", open=False):
                        search = gr.Radio(list(SEARCH_MODES), value="off", label="Search")
                        budget = gr.Slider(1, settings.limits.max_budget, value=4, step=0.5,
                                           label="Budget per image (plain samples of compute)")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Images", columns=4, height="auto", format="png",
                                         elem_id="gallery", object_fit="contain")
                    previews = gr.Gallery(label="Coarse to fine (first image, after each scale)",
                                          columns=t.num_scales, rows=1, height=150, format="png", elem_id="previews")
                    stats = gr.JSON(label="Request stats (seconds, KV bytes, depth plan, search scores)",
                                    max_height=320)
            run.click(demo_.generate,
                      [class_, num, seed, cfg, top_k, top_p, smooth, randomize, depth, switch, budget_mib, search,
                       budget],
                      [gallery, previews, stats, seed], api_name="generate", concurrency_id="model",
                      concurrency_limit=settings.concurrency)
        with gr.Tab("About"):
            gr.Markdown(demo_.about())
            samples = Path(pipe.meta.get("path", "")) / "samples.png" if pipe.meta.get("path") else None
            if samples is not None and samples.is_file():
                gr.Image(str(samples), label="Samples of this model", show_label=True, interactive=False,
                         format="png")
    app.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return app


def launch(pipe: Pipeline, settings: ServeSettings | None = None, *, block: bool = True) -> gr.Blocks:
    """Serve on settings.host:port, offline (no analytics, no share link). block=False returns at once;
    stop with app.close()."""
    settings = settings or ServeSettings()
    if not os.environ.get("GRADIO_TEMP_DIR"):  # Gradio's file cache: a temporary folder of this process
        os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="var-engine-gradio-")
        atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], True)
    app = build_app(pipe, settings)
    app.launch(server_name=settings.host, server_port=settings.port, share=False, show_error=True, inbrowser=False,
               prevent_thread_lock=not block, quiet=not block, max_file_size="1kb", ssr_mode=False,
               theme=offline_theme(), css=CSS, footer_links=["api"], mcp_server=False, pwa=False,
               enable_monitoring=False)
    return app
