"""On-demand benchmarks: ``python -m benchmarks [inbox] [options]``; ratios, never timed tests."""
