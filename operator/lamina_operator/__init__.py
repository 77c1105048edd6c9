"""Lamina operator: reconciles LLMDeployment resources into vLLM hidden-state servers."""
