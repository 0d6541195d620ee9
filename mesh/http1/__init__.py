"""HTTP/1.1 on asyncio protocols: message types, strict parsing, serialisation, connections."""
