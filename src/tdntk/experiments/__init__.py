"""Experiments: each is a frozen config dataclass with presets and a `run(cfg)` function."""
