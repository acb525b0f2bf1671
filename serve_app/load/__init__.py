"""Load: the signals sampled from GPUs, CPUs and engines (signals), the level policy with
hysteresis (policy), and what each level changes in a request (degradation).
"""
