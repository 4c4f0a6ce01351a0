"""The demo app's HTTP and WebSocket routes."""
