"""ONNX export, INT8 calibration to Q/DQ, TensorRT building and refit (the engines issue)."""
