"""Parallelism: device mesh and logical-axis sharding rules."""
