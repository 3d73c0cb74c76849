"""The pure, synchronous, I/O-free decision core. Nothing here may import trio, sockets,
time or subprocess: every function takes `now` and returns the effects to perform."""
