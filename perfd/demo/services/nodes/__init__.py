"""The node registry, the sensor queue and the router that drives the DAG."""
