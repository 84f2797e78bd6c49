"""Lightning callbacks: stability telemetry, throughput and cost, decoding evaluation, run summary,
W&B dashboard layout and checkpoints on interrupt. Each is enabled by a file in conf/callbacks/."""
