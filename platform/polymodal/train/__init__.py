"""Ray Train wiring: the driver that fits a run (run.py) and the per-worker loop (loop.py), with
its step strategy, epoch statistics and resume."""
