"""The demo's tests stop every child of a `mesh demo` they started, as the sidecar tests do."""

from tests.sidecar.conftest import no_stray_children

__all__ = ["no_stray_children"]
