"""The in-process ground-truth collector (the classic in-app metrics design).

Everything perfd measures from outside is measured here from inside, exactly,
and served by the demo app in the same v1.0.0 schema. Switched by
``LIDAR_ENABLE_METRICS``.
"""
