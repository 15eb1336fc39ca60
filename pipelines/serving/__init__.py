"""Serving a finished run: batch predictions, in-process models, ONNX export, and input
drift at scoring.
"""
