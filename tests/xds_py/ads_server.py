#!/usr/bin/env python3
"""A small xDS management server on grpcio + xds-protos, for tests/xds_python.rs and
tests/xds_sources.rs.

It shares no code with Switchyard's own xDS (Rust, prost): the messages are the Python classes
that the xds-protos package generates from Envoy's data-plane-api, built here from proto3 JSON
with google.protobuf.json_format, and served with grpcio.

It serves a SNAPSHOT: per type URL, a version and the list of resources of that type, over ADS
(AggregatedDiscoveryService, every type on one stream) and over the per-type services
(ListenerDiscoveryService, ClusterDiscoveryService, EndpointDiscoveryService: one type per
stream, as Envoy uses them for an `api_config_source` that is not ADS). A request of another
type than its service's on a per-type stream is logged as an "error" event and not answered.
Events carry "service": "ads", "lds", "cds" or "eds".

* State of the World (StreamAggregatedResources): the first request of a type on a stream, a
  request whose resource names changed, and every change of that type's snapshot get the current
  resources of the type (listeners and clusters: all of them, wildcard; endpoint assignments: the
  requested names). ACKs and NACKs of what was last sent get nothing (so a NACK does not loop).
* Delta (DeltaAggregatedResources): per stream, what the client has (name -> version, seeded from
  `initial_resource_versions` on a new stream); only added or changed resources are sent, and
  `removed_resources` for names the client has that the snapshot no longer holds. The resources
  of a NACKed response count as had in an unknown version (the next change of the type offers
  them again, or removes them). A resource's
  version is a hash of its bytes, so an unchanged resource is never resent. Listeners and
  clusters are wildcard when the first request subscribes to nothing (or to "*").
* A type that was never set is unknown: requests for it are not answered until it is.

Control: one JSON object per line on stdin.
  {"op": "set", "type_url": T, "version": V, "resources": [<proto3 JSON with "@type">, ...]}
      replaces type T's resources, sent as given (two resources with one name stay two). An
      `Any` whose "@type" no linked proto knows (an unknown filter, say) is sent with that type
      URL and an empty value.
  {"op": "quit"}   (end of stdin does the same)

Events: one JSON object per line on stdout, flushed at once:
  {"event": "listening", "port": N}
  {"event": "snapshot", "type_url", "version", "resources": [names]}
  {"event": "stream_open" | "stream_closed", "api", "stream"} (stream_open with "metadata":
   the request metadata, [name, value] pairs)
  {"event": "request", "api", "stream", "type_url", "version_info", "response_nonce",
   "resource_names", "error_detail", ...}         (every request)
  {"event": "ack" | "nack", "api", "stream", "type_url", "version_info", "response_nonce",
   "error_detail", "stale"}                        (a request answering a response of ours)
  {"event": "sent", "api", "stream", "type_url", "version", "nonce", "resources": [names],
   "removed": [names]}
  {"event": "error", "message"}                    (a bad control line; nothing changed)

Usage: ads_server.py [--port N]   (0, the default, picks a free port; listens on 127.0.0.1)
"""

import argparse
import hashlib
import json
import queue
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import any_pb2, descriptor_pool, json_format, message_factory

# Linked so that json_format and Any can resolve them from the default pool.
from envoy.config.cluster.v3 import cluster_pb2  # noqa: F401
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: F401
from envoy.config.listener.v3 import listener_pb2  # noqa: F401
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
# Types whose empty subscription means "all of them".
WILDCARD_TYPES = {LISTENER, CLUSTER}

POOL = descriptor_pool.Default()
PLACEHOLDER = "type.googleapis.com/google.protobuf.Empty"

_out_lock = threading.Lock()


def emit(event, **fields):
    line = json.dumps(dict(event=event, **fields), sort_keys=True)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# proto3 JSON -> Any
# ---------------------------------------------------------------------------------------------


def _message_class(full_name):
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


def _type_name(type_url):
    return type_url.rsplit("/", 1)[-1]


def _field(desc, key):
    for f in desc.fields:
        if key in (f.name, f.json_name):
            return f
    return None


def _is_map(f):
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _scrub(value, desc, path, fixups):
    """Returns `value` (the JSON of a `desc` message) with every Any of a type that the pool
    does not know replaced by a placeholder Any; records (path, type_url) for each."""
    if not isinstance(value, dict):
        return value
    if desc.full_name == "google.protobuf.Any":
        type_url = value.get("@type")
        if type_url is None:
            return value
        try:
            inner = POOL.FindMessageTypeByName(_type_name(type_url))
        except KeyError:
            fixups.append((path, type_url))
            return {"@type": PLACEHOLDER}
        if inner.full_name.startswith("google.protobuf."):
            return value
        rest = {k: v for k, v in value.items() if k != "@type"}
        out = _scrub(rest, inner, path, fixups)
        out["@type"] = type_url
        return out
    if desc.full_name.startswith("google.protobuf."):
        return value
    out = {}
    for key, v in value.items():
        f = _field(desc, key)
        if f is None or f.message_type is None:
            out[key] = v
        elif _is_map(f):
            vf = f.message_type.fields_by_name["value"]
            if vf.message_type is None or not isinstance(v, dict):
                out[key] = v
            else:
                out[key] = {
                    mk: _scrub(mv, vf.message_type, path + [key, mk], fixups)
                    for mk, mv in v.items()
                }
        elif f.is_repeated and isinstance(v, list):
            out[key] = [_scrub(x, f.message_type, path + [key, i], fixups) for i, x in enumerate(v)]
        else:
            out[key] = _scrub(v, f.message_type, path + [key], fixups)
    return out


def _set_any_type(msg, path, type_url):
    """Follows `path` (JSON keys and list indexes) from `msg` to an Any and gives it
    `type_url` and an empty value; an Any on the way is unpacked and packed again."""
    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        if not path:
            msg.type_url = type_url
            msg.value = b""
            return
        inner = _message_class(_type_name(msg.type_url))()
        inner.ParseFromString(msg.value)
        _set_any_type(inner, path, type_url)
        msg.value = inner.SerializeToString(deterministic=True)
        return
    f = _field(msg.DESCRIPTOR, path[0])
    container = getattr(msg, f.name)
    if _is_map(f) or f.is_repeated:
        _set_any_type(container[path[1]], path[2:], type_url)
    else:
        _set_any_type(container, path[1:], type_url)


def to_any(resource):
    """A resource given as proto3 JSON with "@type" -> google.protobuf.Any."""
    if not isinstance(resource, dict) or "@type" not in resource:
        raise ValueError("a resource must be a JSON object with \"@type\"")
    fixups = []
    clean = _scrub(resource, any_pb2.Any.DESCRIPTOR, [], fixups)
    if fixups and fixups[0][0] == []:
        raise ValueError("unknown resource type %s" % resource["@type"])
    out = any_pb2.Any()
    json_format.ParseDict(clean, out)
    for path, type_url in fixups:
        _set_any_type(out, path, type_url)
    # Deterministic bytes: the Delta version hash and comparisons depend on them.
    inner = _message_class(_type_name(out.type_url))()
    inner.ParseFromString(out.value)
    out.value = inner.SerializeToString(deterministic=True)
    return out


def resource_name(any_msg):
    inner = _message_class(_type_name(any_msg.type_url))()
    inner.ParseFromString(any_msg.value)
    for field in ("name", "cluster_name"):
        if field in inner.DESCRIPTOR.fields_by_name:
            return getattr(inner, field)
    return ""


def resource_version(any_msg):
    return hashlib.sha256(any_msg.type_url.encode() + any_msg.value).hexdigest()[:16]


class TypeSnapshot:
    def __init__(self, version, resources):
        self.version = version
        # [(name, version, Any)] in the order given, duplicates kept.
        self.resources = [(resource_name(r), resource_version(r), r) for r in resources]


# ---------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------


def _error_message(req):
    if req.HasField("error_detail"):
        return req.error_detail.message or "(NACK without a message)"
    return None


class Stream:
    """One ADS stream: requests in (a reader thread), responses out (a queue the gRPC handler
    drains). All state changes happen under the server's lock."""

    api = None

    def __init__(self, server, stream_id, service="ads", only_type=None):
        self.server = server
        self.id = stream_id
        # "ads", or the per-type service ("lds", "cds", "eds") and the one type it carries.
        self.service = service
        self.only_type = only_type
        self.out = queue.Queue()
        self.nonce = 0
        self.closed = False

    def next_nonce(self):
        self.nonce += 1
        return "s%d-n%d" % (self.id, self.nonce)

    def close(self):
        self.out.put(None)

    def wrong_type(self, t):
        """True (and logged) for a request of another type than a per-type stream's."""
        if self.only_type is None or t == self.only_type:
            return False
        emit("error", message="a %s request on a %s stream" % (t, self.service),
             service=self.service, stream=self.id)
        return True

    def emit_answer(self, t, version_info, response_nonce, err, last_nonce):
        """Logs a request that answers a response: an ACK, or a NACK when it has an error."""
        emit(
            "nack" if err is not None else "ack",
            api=self.api,
            stream=self.id,
            type_url=t,
            version_info=version_info,
            response_nonce=response_nonce,
            error_detail=err,
            stale=response_nonce != last_nonce,
            service=self.service,
        )


class SotwStream(Stream):
    api = "sotw"

    def __init__(self, server, stream_id, service="ads", only_type=None):
        super().__init__(server, stream_id, service, only_type)
        # type_url -> {"names": set or None (wildcard), "nonce": last sent, "version": last sent}
        self.types = {}

    def on_request(self, req):
        t = req.type_url
        err = _error_message(req)
        emit(
            "request",
            api=self.api,
            stream=self.id,
            type_url=t,
            version_info=req.version_info,
            response_nonce=req.response_nonce,
            resource_names=list(req.resource_names),
            error_detail=err,
            node_id=req.node.id if req.HasField("node") else None,
            node_metadata=json_format.MessageToDict(req.node.metadata) if req.HasField("node") else None,
            node_locality=json_format.MessageToDict(req.node.locality) if req.HasField("node") else None,
            service=self.service,
        )
        if self.wrong_type(t):
            return
        state = self.types.get(t)
        first = state is None
        if first:
            state = self.types[t] = {"names": None, "nonce": None, "version": None}
        names = set(req.resource_names)
        if t in WILDCARD_TYPES and (not names or "*" in names):
            names = None
        else:
            names.discard("*")
        changed = first or names != state["names"]
        state["names"] = names
        if req.response_nonce:
            self.emit_answer(t, req.version_info, req.response_nonce, err, state["nonce"])
        # A new stream, or new names: the current state. ACKs and NACKs: nothing.
        if not req.response_nonce or changed:
            self.send(t)

    def on_snapshot(self, t):
        if t in self.types:
            self.send(t)

    def send(self, t):
        snap = self.server.snapshot.get(t)
        if snap is None:
            return
        names = self.types[t]["names"]
        chosen = [(n, r) for (n, _, r) in snap.resources if names is None or n in names]
        if names is not None and not chosen:
            return
        nonce = self.next_nonce()
        self.types[t]["nonce"] = nonce
        self.types[t]["version"] = snap.version
        resp = discovery_pb2.DiscoveryResponse(
            version_info=snap.version,
            resources=[r for (_, r) in chosen],
            type_url=t,
            nonce=nonce,
        )
        self.out.put((resp, dict(type_url=t, version=snap.version, nonce=nonce,
                                 resources=[n for (n, _) in chosen], removed=[])))


class DeltaStream(Stream):
    api = "delta"

    def __init__(self, server, stream_id, service="ads", only_type=None):
        super().__init__(server, stream_id, service, only_type)
        # type_url -> {"wildcard": bool, "names": set, "has": {name: version}, "nonce": last
        # sent, "inflight": {nonce: names sent, until the client answers}}
        self.types = {}

    def on_request(self, req):
        t = req.type_url
        err = _error_message(req)
        emit(
            "request",
            api=self.api,
            stream=self.id,
            type_url=t,
            version_info=None,
            response_nonce=req.response_nonce,
            resource_names=list(req.resource_names_subscribe),
            resource_names_unsubscribe=list(req.resource_names_unsubscribe),
            initial_resource_versions=dict(req.initial_resource_versions),
            error_detail=err,
            node_id=req.node.id if req.HasField("node") else None,
            node_metadata=json_format.MessageToDict(req.node.metadata) if req.HasField("node") else None,
            node_locality=json_format.MessageToDict(req.node.locality) if req.HasField("node") else None,
            service=self.service,
        )
        if self.wrong_type(t):
            return
        state = self.types.get(t)
        first = state is None
        if first:
            state = self.types[t] = {
                "wildcard": False,
                "names": set(),
                "has": dict(req.initial_resource_versions),
                "nonce": None,
                "inflight": {},
            }
            if t in WILDCARD_TYPES and not req.resource_names_subscribe:
                state["wildcard"] = True
        subscribe = set(req.resource_names_subscribe)
        unsubscribe = set(req.resource_names_unsubscribe)
        if "*" in subscribe:
            state["wildcard"] = True
        if "*" in unsubscribe:
            state["wildcard"] = False
        state["names"] |= subscribe - {"*"}
        state["names"] -= unsubscribe
        for n in unsubscribe:
            state["has"].pop(n, None)
        if req.response_nonce:
            self.emit_answer(t, None, req.response_nonce, err, state["nonce"])
            sent = state["inflight"].pop(req.response_nonce, ())
            if err is not None:
                # What a NACKed response carried may or may not be there (Envoy applies the
                # valid part): an unknown version, offered again or removed on the next change.
                for n in sent:
                    state["has"][n] = None
        # New subscriptions may need resources; a new stream always gets an answer (empty if
        # the client already has everything) so that it knows the state is known.
        if first or subscribe or unsubscribe:
            self.send(t, always=first)

    def on_snapshot(self, t):
        if t in self.types:
            self.send(t, always=False)

    def send(self, t, always):
        snap = self.server.snapshot.get(t)
        if snap is None:
            return
        state = self.types[t]

        def wanted(n):
            return state["wildcard"] or n in state["names"]

        latest = {}
        for (n, v, _) in snap.resources:
            latest[n] = v
        changed = {n for (n, v) in latest.items() if wanted(n) and state["has"].get(n) != v}
        chosen = [(n, v, r) for (n, v, r) in snap.resources if n in changed]
        removed = sorted(n for n in state["has"] if n not in latest and wanted(n))
        if not chosen and not removed:
            if not always or (not state["wildcard"] and not state["names"]):
                return
        for n in changed:
            state["has"][n] = latest[n]
        for n in removed:
            del state["has"][n]
        nonce = self.next_nonce()
        state["nonce"] = nonce
        state["inflight"][nonce] = changed
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snap.version,
            resources=[discovery_pb2.Resource(name=n, version=v, resource=r)
                       for (n, v, r) in chosen],
            type_url=t,
            removed_resources=removed,
            nonce=nonce,
        )
        self.out.put((resp, dict(type_url=t, version=snap.version, nonce=nonce,
                                 resources=[n for (n, _, _) in chosen], removed=removed)))


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class Server(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS, and (through `PerType`) the per-type services, over one snapshot."""

    def __init__(self):
        self.lock = threading.Lock()
        self.snapshot = {}
        self.streams = []
        self.next_stream = 0

    def set(self, type_url, version, resources):
        anys = [to_any(r) for r in resources]  # raises before anything changes
        for a in anys:
            if a.type_url != type_url:
                raise ValueError("a %s among resources of %s" % (a.type_url, type_url))
        with self.lock:
            snap = TypeSnapshot(version, anys)
            self.snapshot[type_url] = snap
            emit("snapshot", type_url=type_url, version=version,
                 resources=[n for (n, _, _) in snap.resources])
            for s in self.streams:
                s.on_snapshot(type_url)

    def _serve(self, cls, request_iterator, context, service="ads", only_type=None):
        with self.lock:
            self.next_stream += 1
            stream = cls(self, self.next_stream, service, only_type)
            self.streams.append(stream)
        # The request metadata, as [name, value] pairs in order (a binary value as hex).
        metadata = [[k, v if isinstance(v, str) else v.hex()]
                    for (k, v) in context.invocation_metadata()]
        emit("stream_open", api=stream.api, stream=stream.id, service=service,
             metadata=metadata)

        def read():
            try:
                for req in request_iterator:
                    with self.lock:
                        stream.on_request(req)
            except Exception as e:  # the stream broke: the handler ends too
                emit("stream_error", api=stream.api, stream=stream.id, message=str(e))
            stream.close()

        context.add_callback(stream.close)
        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                item = stream.out.get()
                if item is None:
                    return
                resp, info = item
                emit("sent", api=stream.api, stream=stream.id, service=stream.service, **info)
                yield resp
        finally:
            with self.lock:
                self.streams.remove(stream)
            emit("stream_closed", api=stream.api, stream=stream.id, service=stream.service)

    def StreamAggregatedResources(self, request_iterator, context):
        return self._serve(SotwStream, request_iterator, context)

    def DeltaAggregatedResources(self, request_iterator, context):
        return self._serve(DeltaStream, request_iterator, context)


class PerType:
    """One per-type discovery service (LDS, CDS or EDS) over the server's snapshot: the same
    streams as ADS, restricted to one type."""

    def __init__(self, server, service, type_url):
        self.server = server
        self.service = service
        self.type_url = type_url

    def sotw(self, request_iterator, context):
        return self.server._serve(SotwStream, request_iterator, context, self.service,
                                  self.type_url)

    def delta(self, request_iterator, context):
        return self.server._serve(DeltaStream, request_iterator, context, self.service,
                                  self.type_url)


class Lds(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    def __init__(self, server):
        self.t = PerType(server, "lds", LISTENER)

    def StreamListeners(self, request_iterator, context):
        return self.t.sotw(request_iterator, context)

    def DeltaListeners(self, request_iterator, context):
        return self.t.delta(request_iterator, context)


class Cds(cds_pb2_grpc.ClusterDiscoveryServiceServicer):
    def __init__(self, server):
        self.t = PerType(server, "cds", CLUSTER)

    def StreamClusters(self, request_iterator, context):
        return self.t.sotw(request_iterator, context)

    def DeltaClusters(self, request_iterator, context):
        return self.t.delta(request_iterator, context)


class Eds(eds_pb2_grpc.EndpointDiscoveryServiceServicer):
    def __init__(self, server):
        self.t = PerType(server, "eds", ENDPOINTS)

    def StreamEndpoints(self, request_iterator, context):
        return self.t.sotw(request_iterator, context)

    def DeltaEndpoints(self, request_iterator, context):
        return self.t.delta(request_iterator, context)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    servicer = Server()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        # One server per port: a second one must fail to bind, not share it.
        options=[("grpc.so_reuseport", 0)],
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(Lds(servicer), server)
    cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(Cds(servicer), server)
    eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(Eds(servicer), server)
    try:
        port = server.add_insecure_port("127.0.0.1:%d" % args.port)
    except RuntimeError as e:
        port, why = 0, str(e)
    else:
        why = "bind failed"
    if port == 0:
        emit("error", message="cannot listen on 127.0.0.1:%d: %s" % (args.port, why))
        sys.exit(2)
    server.start()
    emit("listening", port=port)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "quit":
                break
            if op != "set":
                raise ValueError("unknown op %r" % op)
            servicer.set(msg["type_url"], str(msg["version"]), msg["resources"])
        except Exception as e:  # a bad control line changes nothing
            emit("error", message="%s: %s" % (type(e).__name__, e), line=line[:2000])
    server.stop(0)
    emit("stopped")


if __name__ == "__main__":
    main()
