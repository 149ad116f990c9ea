"""Real servers joining and leaving the cluster at run time through the directors' signed HTTP API."""
