"""taktstock benchmark suite: `python -m benchmarks [mlp resnet memory checkpoint startup] [options]`.

Every timed comparison runs its contenders in one process, interleaved (round r runs every
contender once, in an order rotated by r), and reports the median samples/s and the median of the
per-round ratios to the hand-written DataLoader loop. See docs/benchmarks.md.
"""
