"""Lamina server: vLLM with forward hooks that return hidden states over HTTP."""
