"""What the build side (import, passes, search, report) and the device side (bundle, runtime,
server, agent) share: errors, CPU facts, the ONNX Runtime session factory, file and slot names.

Nothing here imports torch, onnx or any other heavy framework.
"""
