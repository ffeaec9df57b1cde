"""The Gradio app: Generate (with test-time search and VARiant depth plans), Edit (zero-shot in-painting,
out-painting and class edits on a painted mask), Subject (tune on a few pictures or load an adapter, for
this browser session only), About; `/generate`, `/edit`, `/tune`, `/load_adapter`, `/generate_subject` APIs."""
from __future__ import annotations

import atexit
import copy
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
from var_engine.editing import fit_to_model, outpaint_canvas
from var_engine.errors import InputError, VarEngineError
from var_engine.pipeline import GenerateOutput, Pipeline

from .validation import (NO_CLASS, SEARCH_MODES, EditRequest, Limits, as_float, as_int, parse_edit_request,
                         parse_request, upload_paths)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio loads: no telemetry, no version check
import gradio as gr  # noqa: E402

log = logging.getLogger(__name__)

CSS = "#gallery img, #previews img, #edit-gallery img, #subject-gallery img { image-rendering: pixelated; }"
MASK_TINT = (1.0, 0.0, 1.0)  # the regenerated region in the shown input
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
    """Request handlers around one pipeline; the only state between requests is a browser session's subject
    adapter, which Gradio keeps per session (gr.State)."""

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

    def edit(self, editor: Any, class_: Any, num_images: Any = 1, seed: Any = 0, cfg: Any = 1.5, outpaint: Any = 0,
             randomize_seed: Any = False) -> Iterator[tuple]:
        """Yields (gallery, stats, seed) once: the input at the model's size with the regenerated region tinted,
        then the edits."""
        try:
            req = parse_edit_request(self.pipe, self.settings.limits, editor, class_, num_images, seed, cfg, outpaint,
                                     randomize_seed)
            image, mask = self.edit_inputs(req)
            out = self.pipe.edit(image, mask, req.label, num=req.num_images, seed=req.seed, cfg=req.cfg)
        except Exception as e:  # noqa: BLE001  (every failure becomes a message; the server stays up)
            raise self.client_error(e) from None
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            shown, shown_mask = fit_to_model(image, mask, self.pipe.config.image_size)
            tint = torch.tensor(MASK_TINT).view(1, 3, 1, 1)
            marked = shown * (1 - 0.6 * shown_mask) + tint * 0.6 * shown_mask
            caption = "in-painted" if req.label is None else f"toward {short_name(self.names[req.label])}"
            gallery = [(write_png(to_uint8(marked)[0], folder, "input"), "input (regenerated region tinted)")]
            gallery += [(write_png(img, folder, f"edit{i}"), caption) for i, img in enumerate(to_uint8(out.images))]
            stats = {"seed": out.seed, "class": req.label, "images": int(out.images.shape[0]),
                     "outpaint": req.outpaint, "regenerated_fraction": round(float(shown_mask.mean()), 4),
                     "seconds": round(out.stats.seconds, 4)}
            yield gallery, stats, out.seed
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # Gradio has copied the files into its cache by now

    def edit_example(self) -> dict[str, Any]:
        """The editor's starting value: one of the model's own images, enlarged 8x for painting."""
        image = to_uint8(self.pipe.generate([min(3, len(self.names) - 1)], seed=0).images)[0]
        big = np.ascontiguousarray(image.repeat(8, 0).repeat(8, 1))
        return {"background": big, "layers": [], "composite": big}

    def edit_inputs(self, req: EditRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (1, 3, H, W), mask (1, 1, H, W)) of a checked edit request (the canvas when out-painting)."""
        image = torch.from_numpy(np.ascontiguousarray(req.image)).float().permute(2, 0, 1)[None]
        if req.outpaint:
            return outpaint_canvas(image, self.pipe.config.image_size, req.outpaint)
        return image, torch.from_numpy(np.ascontiguousarray(req.mask)).float()[None, None]

    def tune(self, files: Any, steps: Any = 150, seed: Any = 0, progress: gr.Progress = gr.Progress(track_tqdm=True)
             ) -> tuple:
        """(session adapter, status, adapter file): tune a new class id on the uploaded pictures. The base model
        is copied under the generation lock and tuned outside it, so other sessions keep generating."""
        from var_engine.data import load_subject_images
        from var_engine.finetune import FinetuneConfig, default_train_config, finetune_subject

        limits = self.settings.limits
        try:
            paths = upload_paths(files, "subject pictures", limits.max_subject_images)
            steps_ = as_int("tuning steps", steps, 1, limits.max_tune_steps)
            seed_ = as_int("seed", seed, 0, 2**31 - 1)
            images = load_subject_images(paths, self.pipe.config.image_size, max_pixels=limits.max_upload_pixels)
            with self.pipe.using_adapter(None):
                base = copy.deepcopy(self.pipe.transformer)
            result = finetune_subject(base, self.pipe.tokenizer, images, FinetuneConfig(new_class=True),
                                      default_train_config(steps_, seed_, str(self.pipe.device)), progress=True)
            path = self.save_adapter(result.adapter)
        except Exception as e:  # noqa: BLE001  (every failure becomes a message; the server stays up)
            raise self.client_error(e) from None
        status = (f"Subject tuned on {len(images)} picture(s) in {result.seconds:.0f} s ({result.steps} steps, "
                  f"{result.trainable_parameters:,} trainable parameters); it is class id {result.adapter.class_id} "
                  "for this session.")
        return result.adapter, status, path

    def load_subject(self, file: Any) -> tuple:
        """(session adapter, status, adapter file) from an uploaded adapter made for this model."""
        try:
            path = upload_paths(file, "an adapter file", 1)[0]
            if os.path.getsize(path) > self.settings.limits.max_upload_mib * 2**20:
                raise InputError("the adapter file is over the upload limit")
            adapter = self.pipe.check_adapter(path)
        except Exception as e:  # noqa: BLE001
            raise self.client_error(e) from None
        return adapter, f"Adapter loaded: its subject is class id {adapter.class_id} for this session.", path

    def generate_subject(self, adapter: Any, num_images: Any = 4, seed: Any = 0, cfg: Any = 1.5) -> Iterator[tuple]:
        """Yields (gallery, stats, seed) once: images of the session's subject (its adapter for this call only)."""
        try:
            if adapter is None:
                raise InputError("no subject in this session yet: tune one or load an adapter")
            num = as_int("number of images", num_images, 1, self.settings.limits.max_images)
            seed_ = as_int("seed", seed, 0, 2**32 - 1)
            cfg_ = as_float("cfg", cfg, 0.0, self.settings.limits.max_cfg)
            out = self.pipe.generate([adapter.class_id] * num, seed=seed_, cfg=cfg_, adapter=adapter)
        except Exception as e:  # noqa: BLE001
            raise self.client_error(e) from None
        folder = Path(tempfile.mkdtemp(dir=self.workdir))
        try:
            gallery = [(write_png(img, folder, f"subject{i}"), f"class {adapter.class_id}")
                       for i, img in enumerate(to_uint8(out.images))]
            yield gallery, {"seed": out.seed, "class": adapter.class_id, "images": num,
                            "seconds": round(out.stats.seconds, 4)}, out.seed
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def save_adapter(self, adapter) -> str:
        from var_engine.checkpoints import save_adapter

        path = Path(tempfile.mkdtemp(dir=self.workdir)) / "subject.safetensors"
        save_adapter(path, adapter)
        return str(path)

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
        with gr.Tab("Edit"):
            gr.Markdown("Paint over what to regenerate; the rest of the image is kept (its tokens are forced at "
                        "every scale). Pick a class to edit toward it, or none to in-paint. An out-paint border "
                        "ignores the painting and generates a frame around the image.")
            with gr.Row():
                with gr.Column(scale=1):
                    editor = gr.ImageEditor(value=demo_.edit_example(), type="numpy", label="Image (paint = regenerate)",
                                            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=24),
                                            layers=False, transforms=(), sources=("upload", "clipboard"),
                                            elem_id="editor")
                    edit_class = gr.Dropdown([NO_CLASS, *demo_.choices()], value=NO_CLASS, label="Edit toward class",
                                             allow_custom_value=True, elem_id="edit-class")
                    edit_num = gr.Slider(1, settings.limits.max_images, value=min(4, settings.limits.max_images),
                                         step=1, label="Number of edits")
                    with gr.Row():
                        edit_seed = gr.Number(0, label="Seed", precision=None, minimum=-1, elem_id="edit-seed")
                        edit_random = gr.Checkbox(False, label="Random seed")
                    edit_cfg = gr.Slider(0, settings.limits.max_cfg, value=1.5, step=0.1, label="CFG")
                    size = pipe.config.image_size
                    outpaint = gr.Slider(0, max(1, size // 2 - 1), value=0, step=1,
                                         label=f"Out-paint border (of {size} model pixels; 0: the painted mask)")
                    edit_run = gr.Button("Edit", variant="primary", elem_id="edit")
                with gr.Column(scale=2):
                    edit_gallery = gr.Gallery(label="Input and edits", columns=4, height="auto", format="png",
                                              elem_id="edit-gallery", object_fit="contain")
                    edit_stats = gr.JSON(label="Request stats", max_height=240)
            edit_run.click(demo_.edit, [editor, edit_class, edit_num, edit_seed, edit_cfg, outpaint, edit_random],
                           [edit_gallery, edit_stats, edit_seed], api_name="edit", concurrency_id="model",
                           concurrency_limit=settings.concurrency)
        with gr.Tab("Subject"):
            gr.Markdown("Teach the model one subject from a few pictures, or load an adapter made by "
                        "`var-engine finetune`. The subject gets a new class id and stays with this browser session; "
                        "other sessions keep the base model.")
            subject = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    pictures = gr.File(file_count="multiple", file_types=["image"], label="3-10 pictures of the subject",
                                       elem_id="subject-pictures")
                    with gr.Row():
                        tune_steps = gr.Slider(1, settings.limits.max_tune_steps,
                                               value=min(150, settings.limits.max_tune_steps), step=1,
                                               label="Tuning steps")
                        tune_seed = gr.Number(0, label="Tuning seed", precision=0, minimum=0)
                    tune_run = gr.Button("Tune", elem_id="tune")
                    adapter_upload = gr.File(file_types=[".safetensors"], label="Or load an adapter (.safetensors)",
                                             elem_id="adapter-upload")
                    subject_status = gr.Markdown("No subject yet: the base model.")
                    adapter_out = gr.File(label="This session's adapter", interactive=False)
                with gr.Column(scale=2):
                    with gr.Row():
                        subject_num = gr.Slider(1, settings.limits.max_images, value=min(4, settings.limits.max_images),
                                                step=1, label="Number of images")
                        subject_seed = gr.Number(0, label="Seed", precision=None, minimum=0)
                        subject_cfg = gr.Slider(0, settings.limits.max_cfg, value=1.5, step=0.1, label="CFG")
                    subject_run = gr.Button("Generate the subject", variant="primary", elem_id="generate-subject")
                    subject_gallery = gr.Gallery(label="Subject", columns=4, height="auto", format="png",
                                                 elem_id="subject-gallery", object_fit="contain")
                    subject_stats = gr.JSON(label="Request stats", max_height=200)
            tune_run.click(demo_.tune, [pictures, tune_steps, tune_seed], [subject, subject_status, adapter_out],
                           api_name="tune", concurrency_id="tune", concurrency_limit=1)
            adapter_upload.upload(demo_.load_subject, [adapter_upload], [subject, subject_status, adapter_out],
                                  api_name="load_adapter", concurrency_id="model",
                                  concurrency_limit=settings.concurrency)
            subject_run.click(demo_.generate_subject, [subject, subject_num, subject_seed, subject_cfg],
                              [subject_gallery, subject_stats, subject_seed], api_name="generate_subject",
                              concurrency_id="model", concurrency_limit=settings.concurrency)
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
    # Gradio decodes uploads with PIL before a handler runs: refuse decompression bombs there (PIL raises at
    # twice this many pixels; the handlers check the limit itself before converting anything)
    Image.MAX_IMAGE_PIXELS = min(Image.MAX_IMAGE_PIXELS or settings.limits.max_upload_pixels,
                                 settings.limits.max_upload_pixels)
    app = build_app(pipe, settings)
    app.launch(server_name=settings.host, server_port=settings.port, share=False, show_error=True, inbrowser=False,
               prevent_thread_lock=not block, quiet=not block,
               max_file_size=int(settings.limits.max_upload_mib * 2**20), ssr_mode=False,
               theme=offline_theme(), css=CSS, footer_links=["api"], mcp_server=False, pwa=False,
               enable_monitoring=False)
    return app
