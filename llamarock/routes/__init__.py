"""HTTP routes: thin. Match the path, call the codec, call the service."""
