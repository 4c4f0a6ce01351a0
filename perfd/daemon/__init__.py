"""``perfd serve``, the long-running daemon: target discovery, re-attach, sd_notify."""
