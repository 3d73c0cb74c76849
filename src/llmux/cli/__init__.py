"""The command line: `llmux run|status|simulate|diagram` (`main`), the status view, the state
diagram's rendering, and argument types shared with the benchmarks and the stand-in."""

from llmux.cli.main import main

__all__ = ["main"]
