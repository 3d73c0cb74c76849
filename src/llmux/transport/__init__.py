"""Transport: moves bytes over non-blocking sockets, knows nothing of HTTP."""
