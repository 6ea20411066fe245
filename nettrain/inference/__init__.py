"""Using a trained model: a checkpoint loaded for inference, new inputs turned into predictions, and how a
binary classifier decides between its two classes."""
