"""Command-line tools: dl-agent, dl-serve, dl-mon, dragonfly and insectarium."""
