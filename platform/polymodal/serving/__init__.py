"""Ray Serve side: request schemas, input decoding, model loading, deployments and the app."""
