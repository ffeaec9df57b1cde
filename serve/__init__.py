"""var-engine's web demo and API (Gradio), installed as `var_engine_serve`; `var-engine serve` starts it."""
from .validation import GenerateRequest, Limits, parse_request

__all__ = ["GenerateRequest", "Limits", "parse_request", "ServeSettings", "build_app", "launch"]


def __getattr__(name):  # gradio loads only when the app is built
    if name in ("ServeSettings", "build_app", "launch"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
