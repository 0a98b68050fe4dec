// SPDX-License-Identifier: GPL-2.0
/* ebpf-socketlb: Cilium-style socket-level balancing of Services at connect() time.
 *
 * connect4 looks the destination (VIP or node IP, port) up in `services`, which holds the
 * Service's current (revision, count); it picks a slot with bpf_get_prandom_u32() % count
 * and rewrites the destination to `backends`[(revision, slot)] before any packet exists: no
 * per-packet NAT, no conntrack entry for the Service hop. A count of 0 refuses the connect
 * with ECONNREFUSED, as kube-proxy's reject rule does. The user space writes a new backend
 * set under a fresh revision, then switches each Service entry in one update, so a connect
 * sees either the old set or the new one, never a mix.
 *
 * getpeername4 and recvmsg4 (connected UDP) give the client back the address it asked for
 * (the reverse translation), from per-socket storage written by connect4, when `settings`
 * says so.
 *
 * Built against the UAPI <linux/bpf.h> only: no CO-RE, no kernel BTF, so the object ships
 * pre-compiled (see build.py for the fixed flags).
 */
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define ECONNREFUSED 111
#define PROTO_TCP 6
#define PROTO_UDP 17

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static __u32 (*bpf_get_prandom_u32)(void) = (void *)BPF_FUNC_get_prandom_u32;
static void *(*bpf_sk_storage_get)(void *map, void *sk, void *value, __u64 flags) =
	(void *)BPF_FUNC_sk_storage_get;
static long (*bpf_set_retval)(int retval) = (void *)BPF_FUNC_set_retval;

struct service_key {
	__u32 ip;   /* network byte order, as user_ip4 */
	__u16 port; /* network byte order, as user_port */
	__u16 pad;
};

struct service_value {
	__u32 revision;
	__u32 count; /* 0: no endpoints, refuse */
};

struct backend_key {
	__u32 revision;
	__u32 slot;
};

struct backend_value {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

enum stat {
	STAT_BALANCED,     /* connects rewritten to a backend */
	STAT_REFUSED,      /* connects to a Service without endpoints */
	STAT_NO_BACKEND,   /* a slot missing under the Service's revision (refused too) */
	STAT_REVERSED,     /* getpeername/recvmsg answers given the Service address back */
	STAT_MAX,
};

enum setting {
	SETTING_REVERSE, /* non-zero: remember the Service address for getpeername/recvmsg */
	SETTING_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct service_key);
	__type(value, struct service_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct service_key);
} origins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SETTING_MAX);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

static __attribute__((always_inline)) void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &which);

	if (value)
		*value += 1; /* per-CPU: no other writer */
}

static __attribute__((always_inline)) int setting(__u32 which)
{
	__u32 *value = bpf_map_lookup_elem(&settings, &which);

	return value && *value;
}

static __attribute__((always_inline)) int refuse(__u32 why)
{
	count(why);
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct service_key key = {.ip = ctx->user_ip4, .port = (__u16)ctx->user_port};
	struct backend_key slot;
	struct service_value *svc;
	struct backend_value *be;
	struct service_key *origin;

	if (ctx->protocol != PROTO_TCP && ctx->protocol != PROTO_UDP)
		return 1;
	svc = bpf_map_lookup_elem(&services, &key);
	if (!svc)
		return 1; /* not a Service: untouched */
	slot.revision = svc->revision;
	slot.slot = svc->count;
	if (slot.slot == 0)
		return refuse(STAT_REFUSED);
	slot.slot = bpf_get_prandom_u32() % slot.slot;
	be = bpf_map_lookup_elem(&backends, &slot);
	if (!be)
		return refuse(STAT_NO_BACKEND);
	if (setting(SETTING_REVERSE)) {
		origin = bpf_sk_storage_get(&origins, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (origin)
			*origin = key;
	}
	ctx->user_ip4 = be->ip;
	ctx->user_port = be->port;
	count(STAT_BALANCED);
	return 1;
}

static __attribute__((always_inline)) int restore(struct bpf_sock_addr *ctx)
{
	struct service_key *origin = bpf_sk_storage_get(&origins, ctx->sk, 0, 0);

	if (origin) {
		ctx->user_ip4 = origin->ip;
		ctx->user_port = origin->port;
		count(STAT_REVERSED);
	}
	return 1;
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	return restore(ctx);
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore(ctx);
}

char LICENSE[] SEC("license") = "GPL";
