"""Live migration of VMs between agents: policy, monitor, source and target flows."""
