"""Engines that run models on the device, one module each (ONNX Runtime GenAI for causal LMs)."""
