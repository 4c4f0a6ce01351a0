"""Turning samples into the ``dag`` section: node calls, their statistics, app state."""
