"""Typed models of the custom resources, parsed from raw Kubernetes dicts."""
