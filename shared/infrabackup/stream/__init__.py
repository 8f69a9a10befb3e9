"""A component's stream: tar, compression, encryption, and the chunking between."""
