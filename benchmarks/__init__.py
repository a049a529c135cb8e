"""kensa's benchmarks: audit emission against its peers, sender throughput,
per-transaction cost of emission, and the journal against the fsync floor.

Run ``python -m benchmarks`` (``--quick`` for a smoke run under a minute). Ratios
measured in the same run are the verdict; absolute times are context.
"""
