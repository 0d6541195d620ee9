"""The mesh's mechanisms: HTTP/1 codec, layers, policies, balancing, identity, telemetry.

Nothing in here reads config files or starts processes; `sidecar` assembles these parts.
The hot modules are compiled with mypyc at install time (see setup.py).
"""

from pathlib import Path


def compiled() -> bool:
    """Whether the data path runs as mypyc-compiled extension modules."""
    from mesh.http1 import server

    return Path(server.__file__ or "").suffix != ".py"


def stale_extensions() -> list[str]:
    """Compiled modules older than their source (they would shadow the newer code)."""
    root = Path(__file__).parent
    stale = []
    for ext in root.rglob("*.so"):
        source = ext.with_name(ext.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
            stale.append(str(source.relative_to(root.parent)))
    return sorted(stale)
