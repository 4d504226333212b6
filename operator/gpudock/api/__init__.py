"""Typed models of the custom resources, parsed from raw Kubernetes dicts."""

GROUP, VERSION = "gpudock.dev", "v1alpha1"  # the API group and version of every kind
