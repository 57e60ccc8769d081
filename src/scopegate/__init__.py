"""scopegate: a policy enforcement proxy for Logto / RFC 9068 access tokens."""

__version__ = "0.1.0"
