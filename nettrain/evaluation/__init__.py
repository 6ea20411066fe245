"""A model measured: loss and accuracy as validation computes them, per-class scores, a checkpoint's metrics
on a split of its data, and the report `nettrain eval` writes."""
