"""Real gRPC peers for Weft's tests, using the grpcio package (gRPC C-core's xDS client).

    python grpc_xds.py servers NAME...   start one echo server per NAME on 127.0.0.1 (or at
                                         HOST:PORT for NAME=HOST:PORT); print
                                         {"NAME": port, ...} and serve until stdin closes
    python grpc_xds.py client TARGET     a proxyless client of xds:///TARGET (GRPC_XDS_BOOTSTRAP
                                         names the bootstrap); one JSON command per stdin line,
                                         {"calls": N, "method": "/test.Echo/Echo",
                                          "metadata": [["key", "value"]]}, answered by one line
                                         {"replies": {"v1": n, ...}, "errors": {"UNAVAILABLE": n}}

Servers answer /test.Echo/Echo with their NAME, and /test.Echo/Flaky with their NAME on
every other call and UNAVAILABLE on the rest, so retries show in the client's results.
"""

import json
import sys
import threading
from concurrent import futures

import grpc


def serve(names):
    servers, ports = [], {}
    for name in names:
        name, _, address = name.partition("=")
        counter = {"calls": 0}
        lock = threading.Lock()

        def echo(request, context, name=name):
            return name.encode()

        def flaky(request, context, name=name, counter=counter, lock=lock):
            with lock:
                counter["calls"] += 1
                fail = counter["calls"] % 2 == 1
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "flaky: failing this call")
            return name.encode()

        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(echo),
                "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            },
        )
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((handler,))
        ports[name] = server.add_insecure_port(address or "127.0.0.1:0")
        server.start()
        servers.append(server)
    print(json.dumps(ports), flush=True)
    sys.stdin.read()
    for server in servers:
        server.stop(0)


def client(target):
    channel = grpc.insecure_channel("xds:///" + target)
    for line in sys.stdin:
        command = json.loads(line)
        call = channel.unary_unary(command.get("method", "/test.Echo/Echo"))
        metadata = [tuple(pair) for pair in command.get("metadata", [])]
        replies, errors = {}, {}
        for _ in range(command["calls"]):
            try:
                reply = call(b"hi", timeout=command.get("timeout", 10), metadata=metadata).decode()
                replies[reply] = replies.get(reply, 0) + 1
            except grpc.RpcError as error:
                code = error.code().name
                errors[code] = errors.get(code, 0) + 1
                if command.get("details"):
                    errors.setdefault("_details", error.details())
        print(json.dumps({"replies": replies, "errors": errors}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "servers":
        serve(sys.argv[2:])
    else:
        client(sys.argv[2])
