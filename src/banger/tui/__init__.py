"""`banger tui`: a Textual terminal UI over the daemon's public client."""
