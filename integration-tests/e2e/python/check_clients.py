"""Generates Python clients from proto/ with grpcio-tools and calls an AutoCrane server with them.

Usage: check_clients.py PROTO_DIR OUT_DIR HOST:PORT

For each of the three packages it imports the generated modules, checks `grpc.health.v1` reports
SERVING for the service, and makes one call whose answer must be well formed: a response, or a
deliberate status (UNIMPLEMENTED until the service exists, or a validation/auth status). Transport
failures (UNAVAILABLE, INTERNAL, UNKNOWN) fail the check. Prints one JSON line per service.
"""

import importlib
import json
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ACCEPTED = {
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}

PROTOS = [
    "autocrane/watchdog/v1/watchdog.proto",
    "autocrane/version/v1/version.proto",
    "autocrane/data/v1/data.proto",
]


def generate(proto_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpcio-tools failed to generate the clients")


def call(channel, service, stub_name, method, request):
    stub = getattr(importlib.import_module(stub_name[0]), stub_name[1])(channel)
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    result = {"service": service, "health": health_pb2.HealthCheckResponse.ServingStatus.Name(status)}
    try:
        getattr(stub, method)(request, timeout=5)
        result["answer"] = "OK"
    except grpc.RpcError as err:  # a status is an answer too, if it is a deliberate one
        result["answer"] = err.code().name
        if err.code() not in ACCEPTED:
            result["error"] = err.details()
    return result


def main() -> int:
    proto_dir, out_dir, target = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    generate(proto_dir, out_dir)
    sys.path.insert(0, str(out_dir))
    watchdog = importlib.import_module("autocrane.watchdog.v1.watchdog_pb2")
    version = importlib.import_module("autocrane.version.v1.version_pb2")
    data = importlib.import_module("autocrane.data.v1.data_pb2")

    failed = False
    with grpc.insecure_channel(target) as channel:
        checks = [
            call(
                channel,
                "autocrane.watchdog.v1.WatchdogListener",
                ("autocrane.watchdog.v1.watchdog_pb2_grpc", "WatchdogListenerStub"),
                "GetPodHealth",
                watchdog.GetPodHealthRequest(pod=watchdog.PodRef(namespace="default", name="web-0")),
            ),
            call(
                channel,
                "autocrane.version.v1.VersionWatcher",
                ("autocrane.version.v1.version_pb2_grpc", "VersionWatcherStub"),
                "ListSources",
                version.ListSourcesRequest(page_size=10),
            ),
            call(
                channel,
                "autocrane.data.v1.DataRepository",
                ("autocrane.data.v1.data_pb2_grpc", "DataRepositoryStub"),
                "GetManifest",
                data.GetManifestRequest(source_id="git-0000000000000000", version="v1"),
            ),
        ]
    for check in checks:
        print(json.dumps(check))
        failed |= check["health"] != "SERVING" or "error" in check
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
