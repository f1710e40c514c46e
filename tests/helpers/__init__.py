"""What the tests stand up instead of the outside world: a hub cache and hub-schema dataset files,
an OpenAI-compatible chat server, a one-node SLURM cluster."""
