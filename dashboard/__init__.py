"""The risk dashboard and RM workspace: a web service over what the engine writes to Redis.

- ``auth``: users (scrypt-hashed passwords in a TOML file), roles, signed session cookies,
  CSRF tokens.
- ``sessions``: the server-side sessions in Redis that signing out and user changes revoke.
- ``logins``: back-off and lockout of failed sign-ins, in Redis.
- ``store``: the dashboard's own index of alerts and prompts in Redis (built from the
  engine's alert stream and per-RM prompt streams), the actions on them, feedback to the
  engine and the audit trail.
- ``app``: the FastAPI application (JSON API, server-sent events, static pages) and the
  authorization and masking rules of each role.
"""
