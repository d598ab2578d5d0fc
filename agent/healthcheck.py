"""`python -m agent.healthcheck`: exit 0 when the local agent reports SERVING (for probes)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.defaults import UNIX_SOCKET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the agent's gRPC health over its socket.")
    parser.add_argument("--address", default=f"unix:{UNIX_SOCKET}")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print("SERVING" if serving else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
