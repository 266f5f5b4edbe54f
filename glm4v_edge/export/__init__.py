"""Export a GLM-4.1V checkpoint to other runtimes (ONNX)."""
