"""llmux: one OpenAI-compatible endpoint in front of many models that share one GPU."""

__version__ = "0.1.0"
