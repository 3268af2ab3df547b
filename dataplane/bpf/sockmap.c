// SPDX-License-Identifier: GPL-2.0
// The kernel fast path (issue 22): an established, plain-TCP flow whose filter chain needs no
// more bytes is spliced in the kernel. Both of its sockets sit in SOCKS, keyed by their socket
// cookies; PEERS maps each socket's cookie to its peer's and counts the bytes its stream
// verdict moved. Each skb that reaches a socket in SOCKS is redirected to the egress of its
// peer, so the bytes never reach user space and never wake the worker. A socket without a
// PEERS entry passes (SK_PASS: user space reads it as before).
//
// Built by dataplane/build.rs with clang (-target bpf); loaded with aya (src/offload.rs).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/// A socket's peer and the bytes redirected to it.
struct peer {
    __u64 cookie;
    __u64 bytes;
};

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, __u32); /* a socket's fd on insert, as aya writes it */
} SOCKS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, __u64);
    __type(value, struct peer);
} PEERS SEC(".maps");

SEC("sk_skb/stream_verdict")
int stream_verdict(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct peer *p = bpf_map_lookup_elem(&PEERS, &cookie);
    if (!p)
        return SK_PASS;
    __sync_fetch_and_add(&p->bytes, skb->len);
    return bpf_sk_redirect_hash(skb, &SOCKS, &p->cookie, 0);
}

char _license[] SEC("license") = "GPL";
