"""Experiments built on the training stack (`medlvr experiment ...`): see training/experiments/mechanism.py."""
