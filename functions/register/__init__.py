"""The register function: models, configurations, deployments, inference specs."""
