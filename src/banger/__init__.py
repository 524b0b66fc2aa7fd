"""banger: fast, persistent Linux microVMs on your own machine."""

__version__ = "0.1.0"
API_VERSION = "v1"
