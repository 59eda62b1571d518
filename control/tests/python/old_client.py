#!/usr/bin/env python3
"""An independent client that drives the old SciStream client's exact
sequence (inbound on the PROD gateway, outbound on the CONS gateway, then
release), written from the wire description only. Stubs are generated at run
time with grpcio-tools into a temporary directory.

Usage: old_client.py --prod HOST:PORT --prod-cert PEM --cons HOST:PORT
                     --cons-cert PEM --producer IP:PORT [--num-conn N]
Exits non-zero with a message on any failure; prints "OLD CLIENT OK" at the end.
"""
import argparse
import concurrent.futures
import os
import socket
import sys
import tempfile
import time
import uuid

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PLACEHOLDER_TOKEN = "placeholder-no-token"  # the old client sends one even without auth


def load_stubs():
    out = tempfile.mkdtemp(prefix="scistream-stubs-")
    rc = protoc.main([
        "protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}",
        os.path.join(HERE, "scistream_wire.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    import scistream_wire_pb2 as pb2
    import scistream_wire_pb2_grpc as pb2_grpc
    return pb2, pb2_grpc


def channel(addr, cert_path):
    with open(cert_path, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    # Connect (TLS included) before the timed sequence, so a slow machine
    # spends its handshake here rather than inside the 0.5 s before hello.
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


def hello_once_req_is_known(pb2, stub, msg, md):
    """hello, retried while the server does not know the uid yet (a req
    delayed on a loaded machine); any other error is final."""
    deadline = time.monotonic() + 4
    while True:
        try:
            return stub.hello(msg, metadata=md, timeout=5)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def side(pb2, stub, uid, role, hello_role, hello_listeners, num_conn, md):
    """req, then hello 0.5 s later concurrently; returns the req answer."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(stub.req, pb2.Request(uid=uid, role=role, num_conn=num_conn, rate=10000),
                        metadata=md, timeout=5)
        time.sleep(0.5)
        t_hello = time.monotonic()
        app = hello_once_req_is_known(
            pb2, stub, pb2.Hello(uid=uid, prod_listeners=hello_listeners, role=hello_role), md)
        resp = fut.result()
        waited = time.monotonic() - t_hello
    # The old client gives up after 5 s; a prompt answer is well inside that
    # even on a loaded machine.
    if waited > 4.0:
        sys.exit(f"{role}: req answered {waited:.2f} s after hello (must be prompt)")
    if len(resp.listeners) != num_conn:
        sys.exit(f"{role}: expected {num_conn} listeners, got {list(resp.listeners)}")
    if list(app.listeners) != list(resp.listeners):
        sys.exit(f"{role}: hello listeners {list(app.listeners)} != req listeners {list(resp.listeners)}")
    return resp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prod", required=True)
    ap.add_argument("--prod-cert", required=True)
    ap.add_argument("--cons", required=True)
    ap.add_argument("--cons-cert", required=True)
    ap.add_argument("--producer", required=True)
    ap.add_argument("--num-conn", type=int, default=2)
    a = ap.parse_args()
    pb2, pb2_grpc = load_stubs()
    md = [("authorization", PLACEHOLDER_TOKEN)]
    uid = str(uuid.uuid1())
    prod = pb2_grpc.ControlStub(channel(a.prod, a.prod_cert))
    cons = pb2_grpc.ControlStub(channel(a.cons, a.cons_cert))

    # Inbound (PROD side).
    presp = side(pb2, prod, uid, "PROD", "PROD", [a.producer], a.num_conn, md)
    if list(presp.prod_listeners) != [a.producer]:
        sys.exit(f"PROD: prod_listeners {list(presp.prod_listeners)} != [{a.producer}]")
    print("PROD listeners:", list(presp.listeners))
    prod.update(pb2.UpdateTargets(uid=uid, remote_listeners=presp.prod_listeners, role="PROD"),
                metadata=md, timeout=5)

    # Outbound (CONS side): the old client's hello says role "PROD".
    cresp = side(pb2, cons, uid, "CONS", "PROD", list(presp.listeners), a.num_conn, md)
    print("CONS listeners:", list(cresp.listeners))
    cons.update(pb2.UpdateTargets(uid=uid, remote_listeners=presp.listeners, role="CONS"),
                metadata=md, timeout=5)

    # Bytes flow ConsApp -> CONS gateway -> PROD gateway -> producer (echo).
    host, port = cresp.listeners[0].rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as s:
        payload = b"scistream-old-client" * 1000
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    if got != payload:
        sys.exit(f"echo through both gateways returned {len(got)} bytes, expected {len(payload)}")

    for name, stub in (("PROD", prod), ("CONS", cons)):
        stub.release(pb2.Release(uid=uid), metadata=md, timeout=5)
    # A second release is NOT_FOUND with a message, not UNKNOWN.
    try:
        prod.release(pb2.Release(uid=uid), metadata=md, timeout=5)
        sys.exit("second release must fail")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            sys.exit(f"second release: expected NOT_FOUND, got {e.code()}: {e.details()}")
    print("OLD CLIENT OK")


if __name__ == "__main__":
    main()
