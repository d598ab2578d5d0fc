"""Libvirt domains: the spec → XML translation, the agent's metadata, and their lifecycle."""
