"""A toy tfpurify plug-in (see pyproject.toml): `defense` and `attack` register themselves on import."""
