"""Process-level helpers every layer may use: fork hooks and /proc/locks."""
