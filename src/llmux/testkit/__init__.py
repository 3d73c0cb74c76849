"""The policy test kit, by part; `llmux.testing` is its public API (see docs/policy-authors.md)."""
