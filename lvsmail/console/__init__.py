"""The operator surface: the local API and its client, status, metrics, events, overrides, outages,
availability and the dashboard, reading a running director only through its view (console.view)."""
