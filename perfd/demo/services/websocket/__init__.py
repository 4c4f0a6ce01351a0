"""WebSocket topic subscriptions and broadcast."""
