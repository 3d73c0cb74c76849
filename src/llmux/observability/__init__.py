"""Observability: what the shells report, never decide. Telemetry turns the cores' effects into
log events and metrics; the journal keeps the transitions for the event stream and the page;
status builds the snapshot behind /llmux/status."""
