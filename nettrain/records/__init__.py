"""What a run leaves behind and how it is read back: checkpoints, metrics.json and the loggers, the run dir's
lock, the console and progress bars, figures, the runs under a dir."""
