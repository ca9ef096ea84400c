"""Qwen2.5-VL formats shared by every layer: image geometry (`format`) and the processor (`processor`)."""
