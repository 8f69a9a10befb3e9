"""Shared fixtures. Real servers (Samba, Azurite, the Key Vault stand-in, the telemetry
endpoint) live in tests/servers/, one module each, started once per test session."""

# Registered once here, so each session fixture is one server for the whole run (a fixture
# imported into a test module is that module's own: one server per importing module).
pytest_plugins = [
    "tests.servers.azurite",
    "tests.servers.ingestion",
    "tests.servers.keyvault",
    "tests.servers.samba",
    "tests.sources_helpers",
    # After the servers: it imports tests.servers.samba, which must be rewritten first.
    "tests.app_fixtures",
]
