"""Authentication: argon2 passwords, login throttling, cookie sessions and API tokens."""
