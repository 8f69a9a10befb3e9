"""Shared fixtures. Real servers (Samba, Azurite, the Key Vault stand-in, the telemetry
endpoint) live in tests/servers/, one module each, started once per test session."""
