"""banger: fast, persistent Linux microVMs on your own machine."""

__version__ = "0.1.0"
API_VERSION = "v1"

__all__ = ["API_VERSION", "AsyncClient", "Client", "ExecResult", "__version__"]


def __getattr__(name: str) -> object:
    # Imported on first use: `import banger` stays cheap for the CLI.
    if name == "Client":
        from banger.client import Client

        return Client
    if name == "AsyncClient":
        from banger.aclient import AsyncClient

        return AsyncClient
    if name == "ExecResult":
        from banger.stream import ExecResult

        return ExecResult
    raise AttributeError(f"module 'banger' has no attribute {name!r}")
