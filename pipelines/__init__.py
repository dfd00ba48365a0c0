"""oncall-router pipelines: configuration, ticket contract, data, model and jobs."""

__version__ = "0.1.0"
