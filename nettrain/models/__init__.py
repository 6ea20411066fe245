"""Models: the families config.registry.MODELS names (net, vision, text, hf, timm_models), the user's own
(custom), built for the data (build), started from weights (weights), losses, a memory of rows, test-time
augmentation."""
