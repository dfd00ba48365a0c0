"""Ray Serve application of oncall-router (the routing endpoint)."""
