"""App state services, laid out like the LiDAR servers perfd profiles
(``<app>.services.nodes.instance:node_manager``)."""
