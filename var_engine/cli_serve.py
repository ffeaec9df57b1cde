"""`var-engine serve`: the web demo and API (Gradio, the 'serve' extra), imported only when asked for."""
from __future__ import annotations

import argparse
import importlib.util

from .cli_common import add_model_args, command, load_pipeline
from .errors import VarEngineError


@command("serve", "web demo and API (Gradio) on a local port; needs the 'serve' extra")
def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise VarEngineError(f"--port must be in [1, 65535], got {args.port}")
    if args.max_images < 1 or args.queue_size < 1 or args.concurrency < 1:
        raise VarEngineError("--max-images, --queue-size and --concurrency must be >= 1")
    if not args.max_budget >= 1 or args.max_budget == float("inf"):
        raise VarEngineError(f"--max-budget must be a finite number >= 1, got {args.max_budget}")
    if importlib.util.find_spec("gradio") is None:
        raise VarEngineError('the web demo needs gradio: pip install "var-engine[serve]" (or -e ".[serve]")')
    pipe = load_pipeline(args)
    from var_engine_serve import Limits
    from var_engine_serve.app import ServeSettings, launch

    settings = ServeSettings(host=args.host, port=args.port, concurrency=args.concurrency, queue_size=args.queue_size,
                             limits=Limits(max_images=args.max_images, max_budget=args.max_budget),
                             preview=not args.no_preview)
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C to stop)")
    launch(pipe, settings)
    return 0


def _configure_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency", type=int, default=1, help="requests generating at once")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait; more are refused")
    p.add_argument("--max-images", type=int, default=16, help="images per request")
    p.add_argument("--max-budget", type=float, default=8.0, help="largest test-time search budget per image")
    p.add_argument("--no-preview", action="store_true", help="do not stream the coarse-to-fine preview")
    add_model_args(p)


cmd_serve.configure = _configure_serve
