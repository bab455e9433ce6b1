"""On-disk formats: one module a format, shared by the readers here and the writers in prep."""
