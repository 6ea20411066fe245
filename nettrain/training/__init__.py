"""The training loop and what it needs: the phases (loop), their state, checkpoint set, guards, optimizer and
schedule, launching (one process or DDP workers), resume, the learning-rate range test."""
