"""Ray actors that hold state. Each is a plain class; ``cluster.deploy`` applies
``ray.remote`` with options from configuration."""
