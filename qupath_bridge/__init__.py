"""QuPath conventions around the engine: GeoJSON, projects (paquo) and the CLI."""
