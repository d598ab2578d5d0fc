"""The gRPC surface: server construction, servicers, conversions and error mapping."""
