"""Service discovery: where a service's endpoints are, and which identity each must present.

The data path consumes `Resolver.watch(service)`; it imports nothing from here but these
types, so a new source (Consul, a file, DNS) plugs in without touching it.
"""

from discovery.endpoint import Endpoint, EndpointSet
from discovery.resolver import Resolver

__all__ = ["Endpoint", "EndpointSet", "Resolver"]
