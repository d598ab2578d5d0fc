"""Test bed for system and multi-node tests: nodes in a box on a private "world" network.

`tests.testbed.nodebox` builds network namespaces, a private libvirtd per node and a fake
outside network; `tests.testbed.wait` holds bounded polling helpers. Nothing here imports
pytest, so scripts (`hack/nodebox.sh`, benchmarks) use the same code as the fixtures.
"""
