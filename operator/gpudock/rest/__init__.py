"""`gpudock api`: gpu-docker-api v0.0.3's REST API served on top of the custom
resources (docs/rest-api.md). A Kubernetes API client only: it never talks to Docker."""
