"""A small OpenAI-compatible stand-in backend (`server`, `protocol`), and the commands that run
it from llmux hooks (`python -m llmux.standin serve|start|stop|alive`, in `__main__`)."""

from llmux.standin.server import Standin, serve

__all__ = ["Standin", "serve"]
