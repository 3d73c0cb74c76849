"""HTTP protocol: turns bytes into requests and responses (h11), with keep-alive, timeouts and
limits. It knows no routes: each request goes to a `Router` (llmux.routes)."""
