"""Engines: the seam between llamarock and the code that runs a model. Engines never see AWS shapes."""
