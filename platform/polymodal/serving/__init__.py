"""Ray Serve side: request schemas and parsing, metrics, the deployments and the app."""
