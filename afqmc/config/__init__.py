"""The config side: registries, the schema, --help, plugins. It imports no torch, so that a config
error comes within a second."""
