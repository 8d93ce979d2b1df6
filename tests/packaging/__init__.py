"""Packaging tests: the Dockerfile, the Helm chart and the Kubernetes docs."""
