"""Measurement of cost: FLOPs, wall-clock throughput and peak memory, measured fairly."""
