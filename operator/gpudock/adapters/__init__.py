"""Adapters: the only modules that talk to Docker, NVML, stores and Kubernetes."""
