"""Exported models: ONNX and TorchScript files, checked against the PyTorch model they came from."""
