"""Key material: wrapping data keys, resolving the settings' keys, Key Vault."""
