"""virt-agent: a node-level virtualization agent driving libvirt behind a gRPC API."""

__version__ = "0.1.0"
