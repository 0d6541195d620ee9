"""Raw TCP upstreams and apps: listeners that tunnel bytes (see listener.py)."""
