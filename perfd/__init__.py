"""perfd — profile a running Python LiDAR server from the outside.

Data flows one way: sources → samples/events → reconstruction → registry →
snapshot → server.
"""

__version__ = "0.1.0"
