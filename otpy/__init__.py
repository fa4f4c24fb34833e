"""otpy: OTP-style supervision trees on trio, and a PostgreSQL connector built on them."""

__version__ = "0.1.0"
