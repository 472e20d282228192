"""Session fixtures; filled in by its own change."""
