"""Ray Tune sweeps over a config's keys (loss weights first): search space, trials that are
full Ray Train runs, and the sweep's results table, plot and best checkpoint."""
