"""Deployment of a fake-quantized student: integer reference forward, ONNX (QDQ) export, packed weights.

intref   the integer reference in plain PyTorch (integer matmuls, float element-wise)
onnx     the ONNX QDQ graph and its onnxruntime session (optional `export` extra, imported lazily)
pack     weights packed to their bit width, and the loader that rebuilds the student bit for bit
run      a finished run's student from its run directory, and the comparisons of the report
"""
