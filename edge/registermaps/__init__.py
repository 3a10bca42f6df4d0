"""Built-in register maps, one TOML file per meter model (data, not code); see edge.registermap."""
