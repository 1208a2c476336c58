// SPDX-License-Identifier: GPL-2.0
/* DualQ coupled AQM on an HTB shaper: the in-kernel half of the 'ebpf' datapath.
 *
 * The router's bottleneck egress carries HTB with two leaf classes under the link class:
 * L (ECT(1) and CE, priority 0) and C (everything else, priority 1, guaranteed the classic
 * protection share). Three programs share the maps below:
 *
 *   dualq_egress  (tc clsact egress, runs before the root qdisc, once per packet)
 *       classifies (skb->priority = the class's HTB classid), enforces the shared buffer
 *       limit, draws drop/mark from the probabilities the control loop wrote in `dq_config`,
 *       does the L queue's native step marking, and stamps the packet (skb->cb) with its
 *       arrival time and class.
 *   on_enqueue    (tp_btf/qdisc_enqueue: the root qdisc accepted the packet)
 *   on_dequeue    (tp_btf/qdisc_dequeue: the packet left the qdisc for the driver)
 *       copy the leaf queues' state for the control loop, note busy periods, measure
 *       sojourn times and emit the per-packet telemetry record at departure.
 *
 * Counters of events (arrivals, drops, marks, sojourn sums) are per CPU (`dq_counts`), so
 * the packet path never bounces a shared cache line between the cores.
 *
 * Per-class queue state comes from the HTB leaf qdiscs themselves (qlen, backlog, bytes and
 * packets sent), found through HTB's class hash from the root qdisc: exact, where counting
 * packets in and out ourselves is not. On this kernel (6.18) the qdisc_dequeue tracepoint
 * misses about 0.3% of the packets HTB dequeues (measured: enqueue tracepoint count = HTB's
 * Sent counter, dequeue tracepoint short by 50-90 packets in 20k), so a backlog counted from
 * the tracepoints leaks and would step-mark every later L packet. The tracepoints still give
 * the per-packet sojourn (a sample: the rare missed packet has no record) and refresh a copy
 * of the leaf counters in `dq_state` at every event, including the empty dequeue that ends
 * each qdisc run, for the control loop to read without a syscall.
 * Why the buffer limit is enforced here: every drop then has a record and a reason; the leaf
 * fifos are sized above the limit and do not overflow in practice.
 *
 * The step threshold is compared with the delay the packet is about to see, predicted as the
 * wait for the link's token bucket (the packet HTB sent last is still being paid for: the
 * "packet in service" of a serialising link) plus the L backlog at the link rate (L is served
 * first, so it drains at the link rate), strictly greater than the threshold as Linux's
 * do_step_aqm(). That is the sojourn the packet will have at dequeue, known one queue-length
 * earlier than a measured sojourn would be, so the L4S control loop does not lag by the queue
 * it is trying to keep short. The L class owns no rate of its own (ebpf.py), so it borrows
 * the link's and cannot overtake the link's bucket.
 *
 * The tracepoints are global (every device in every namespace), so they return early unless
 * the device is ours: ifindex and network-namespace inode from `dq_config`.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#define CLS_L 0
#define CLS_C 1
#define ACT_ENQUEUE 0
#define ACT_DROP 1
#define ACT_MARK 2
#define META_MAGIC 0xA5u
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_SYN 0x02
#define BULK_MAX 16

struct cls_cfg {
	__u32 p_drop;   /* probability * 2^32, saturated at 2^32 - 1 */
	__u32 p_mark;
	__u64 step_ns;  /* CE-mark when the predicted sojourn exceeds this; 0 = off */
};

struct config {
	struct cls_cfg cls[2];
	__u64 ps_per_byte;   /* link serialisation time per byte, picoseconds */
	__u32 classid[2];    /* HTB classid per class, set as skb->priority */
	__u32 ifindex;       /* the shaped device ... */
	__u32 netns_ino;     /* ... in this network namespace */
	__u32 limit_pkts;    /* shared buffer of both queues; 0 = none */
	__u32 sample_every;  /* telemetry for 1 packet in N; 0 = off */
	__u32 single_queue;  /* 1: everything in C (policies without a DualQ) */
	__u32 min_backlog;   /* bytes: no coin toss below this total backlog (Linux: 2 MTU) */
	__u32 leaf_handle[2];  /* handles of the L and C leaf qdiscs (11:, 12:), for checking */
	__u64 seq;           /* bumped by the control loop on each write */
};

/* Event counters, per CPU: incremented without atomics or shared cache lines; the control
 * loop sums the CPUs (one lookup syscall per class and update). */
struct cls_counts {
	__u64 arrivals, arr_bytes;        /* seen by dualq_egress */
	__u64 drops, marks, overflows, step_marks;
	__u64 deq_traced, soj_sum_ns;     /* sojourn samples at the dequeue tracepoint */
};

#define COUNTS_GLOBAL 2  /* index of the record below in `dq_counts` */
struct global_counts {
	__u64 records, records_lost, unstamped_deq, leaf_lookups, leaf_misses;
	__u64 _pad[3];
};

_Static_assert(sizeof(struct global_counts) == sizeof(struct cls_counts), "counts entry size");

/* Queue state, shared (mmapped by the control loop), written under the qdisc lock. */
struct cls_state {
	__u64 soj_max_ns;                 /* the control loop zeroes it when it reads */
	__u64 last_deq_arr_ns;            /* arrival time of the last packet dequeued */
	__u64 busy_start_ns;              /* when the leaf last went from empty to non-empty */
	/* the leaf qdisc's own counters, copied at each qdisc event */
	__u64 q_pkts, q_bytes, q_sent_pkts, q_sent_bytes;
	__u64 q_ns;                       /* when they were copied */
};

struct pkt_rec {
	__u64 t_arr_ns;
	__u64 t_dep_ns;  /* 0 if dropped */
	__u32 src, dst;  /* host byte order; 0 for IPv6 */
	__u16 sport, dport;
	__u16 size;
	__u8 cls, ecn_in, action, proto;
	__u8 _pad[6];
};

_Static_assert(sizeof(struct pkt_rec) == 40, "record size is part of the agent's layout");
/* unused: puts struct pkt_rec in the object's BTF, where a test compares it with the agent */
const volatile struct pkt_rec layout_pkt_rec;

/* what dualq_egress leaves in the qdisc cb for the tracepoints */
struct stamp {
	__u64 t_arr_ns;
	__u32 meta;  /* magic << 24 | sampled << 16 | action << 8 | ecn_in << 2 | cls */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct config);
} dq_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct cls_counts);
} dq_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct cls_state);
} dq_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} dq_records SEC(".maps");

struct pkt_info {
	__u32 src, dst;
	__u16 sport, dport;
	__u8 ecn, proto, syn, ip;
};

static __always_inline struct config *get_config(void)
{
	__u32 k = 0;
	return bpf_map_lookup_elem(&dq_config, &k);
}

static __always_inline struct cls_counts *get_counts(__u32 cls)
{
	return bpf_map_lookup_elem(&dq_counts, &cls);
}

static __always_inline struct global_counts *get_global(void)
{
	__u32 g = COUNTS_GLOBAL;
	return bpf_map_lookup_elem(&dq_counts, &g);
}

static __always_inline struct cls_state *get_state(__u32 cls)
{
	return bpf_map_lookup_elem(&dq_state, &cls);
}

static __always_inline void parse_ports(void *l4, void *end, struct pkt_info *pi)
{
	if (pi->proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return;
		pi->sport = bpf_ntohs(th->source);
		pi->dport = bpf_ntohs(th->dest);
		pi->syn = th->syn;
	} else if (pi->proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return;
		pi->sport = bpf_ntohs(uh->source);
		pi->dport = bpf_ntohs(uh->dest);
	}
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt_info *pi)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > end)
			return -1;
		pi->ip = 4;
		pi->ecn = iph->tos & 3;
		pi->proto = iph->protocol;
		pi->src = bpf_ntohl(iph->saddr);
		pi->dst = bpf_ntohl(iph->daddr);
		if (!(iph->frag_off & bpf_htons(0x1fff)))  /* ports only in the first fragment */
			parse_ports((void *)iph + iph->ihl * 4, end, pi);
		return 0;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		pi->ip = 6;
		pi->ecn = (bpf_ntohl(*(__be32 *)ip6) >> 20) & 3;
		pi->proto = ip6->nexthdr;
		parse_ports(ip6 + 1, end, pi);
		return 0;
	}
	return -1;
}

/* One coin toss for drop and mark; then the step. Returns the action. */
#define WHY_OVERFLOW 1
#define WHY_STEP 2

/* ---- the HTB leaf qdiscs, found from the root qdisc */

struct leaf_cache {
	__u64 root;     /* the root qdisc the leaves were found under */
	__u64 leaf[2];  /* struct Qdisc * of the L and C leaves */
	__u64 link;     /* struct htb_class * of the L class's parent: the link (1:1) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct leaf_cache);
} dq_leaves SEC(".maps");

struct leafq {
	__u32 qlen, backlog;
	__u64 sent_pkts, sent_bytes;
};

static __always_inline void count_global(int field)
{
	struct global_counts *gc = get_global();

	if (gc && field == 0)
		gc->leaf_lookups++;
	else if (gc)
		gc->leaf_misses++;
}

extern void *bpf_cast_to_kern_ctx(void *) __ksym;
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/* A kernel pointer held as a number, as a read-only typed pointer: its loads are plain
 * (fault-safe) memory loads, far cheaper than a bpf_probe_read_kernel() call each. */
#define KPTR(type, p) ((type *)bpf_rdonly_cast((void *)(p), bpf_core_type_id_kernel(type)))

/* htb_find(): qdisc_class_find(&q->clhash, classid); the class, 0 if absent */
static __always_inline __u64 htb_class_of(__u64 root, __u32 classid)
{
	struct htb_sched *hq = KPTR(struct htb_sched,
				    root + bpf_core_field_offset(struct Qdisc, privdata));
	__u32 h = classid;
	struct hlist_node *n;

	h ^= h >> 8;  /* qdisc_class_hash() */
	h ^= h >> 4;
	h &= hq->clhash.hashmask;
	n = KPTR(struct hlist_head, &hq->clhash.hash[h])->first;
	for (int i = 0; i < 16 && n; i++) {
		struct htb_class *cl = KPTR(struct htb_class, (__u64)n -
			bpf_core_field_offset(struct Qdisc_class_common, hnode));
		if (cl->common.classid == classid)
			return (__u64)cl;
		n = n->next;
	}
	return 0;
}

static __always_inline __u64 htb_leaf(__u64 root, __u32 classid)
{
	__u64 cl = htb_class_of(root, classid);

	return cl ? (__u64)KPTR(struct htb_class, cl)->leaf.q : 0;
}

/* How long (ns) until the link's token bucket has paid for what HTB already sent: the wait
 * of an L packet that arrives now behind the packet "in service" (L borrows the link's rate,
 * so it goes when the link's bucket is non-negative). htb_charge_class() keeps `tokens` in ns
 * as of `t_c` (ktime_get_ns, the clock of bpf_ktime_get_ns); it refills at one ns per ns,
 * up to `buffer`. */
static __always_inline __u64 link_wait_ns(struct leaf_cache *lc, __u64 now)
{
	struct htb_class *link;
	__s64 toks, elapsed;

	if (!lc->link)
		return 0;
	link = KPTR(struct htb_class, lc->link);
	elapsed = (__s64)(now - link->t_c);
	if (elapsed < 0)
		elapsed = 0;
	toks = link->tokens + elapsed;
	return toks < 0 ? (__u64)(-toks) : 0;
}

static __always_inline struct leaf_cache *leaves(struct config *cfg, __u64 root)
{
	__u32 k = 0;
	struct leaf_cache *lc = bpf_map_lookup_elem(&dq_leaves, &k);

	if (!lc)
		return NULL;
	if (lc->root != root || !lc->leaf[0] || !lc->leaf[1]) {
		count_global(0);
		lc->leaf[0] = htb_leaf(root, cfg->classid[0]);
		lc->leaf[1] = htb_leaf(root, cfg->classid[1]);
		lc->link = htb_class_of(root, cfg->classid[0]);
		if (lc->link)
			lc->link = (__u64)KPTR(struct htb_class, lc->link)->parent;
		lc->root = root;
	}
	return lc;
}

/* The leaf's counters; -1 if it is not the qdisc we installed (then the cache is stale). */
static __always_inline int read_leaf(struct config *cfg, struct leaf_cache *lc, __u32 cls,
				     struct leafq *out)
{
	struct Qdisc *leaf;

	if (!lc->leaf[cls & 1])
		return -1;
	leaf = KPTR(struct Qdisc, lc->leaf[cls & 1]);
	if (leaf->handle != cfg->leaf_handle[cls & 1]) {
		lc->root = 0;
		count_global(1);
		return -1;
	}
	out->qlen = leaf->q.qlen;
	out->backlog = leaf->qstats.backlog;
	out->sent_bytes = leaf->bstats.bytes.v.a.a.counter;
	out->sent_pkts = leaf->bstats.packets.v.a.a.counter;
	return 0;
}

/* Copy a leaf's counters to dq_state for the control loop. */
static __always_inline void publish(struct config *cfg, struct leaf_cache *lc, __u32 cls,
				    __u64 now, struct leafq *lq)
{
	struct cls_state *st = get_state(cls);

	if (!st || read_leaf(cfg, lc, cls, lq) < 0)
		return;
	st->q_pkts = lq->qlen;
	st->q_bytes = lq->backlog;
	st->q_sent_pkts = lq->sent_pkts;
	st->q_sent_bytes = lq->sent_bytes;
	st->q_ns = now;
}

/* ---- the per-packet decision at enqueue */

/* One coin toss for drop and mark; then the step. Returns the action. */
static __always_inline __u8 decide(struct config *cfg, __u32 cls, struct pkt_info *pi,
				   struct leafq *q, __u64 wait_ns, int *why)
{
	struct cls_cfg *cc = &cfg->cls[cls & 1];
	__u64 r = bpf_get_prandom_u32();
	__u8 action = ACT_ENQUEUE;

	if (cfg->limit_pkts && q[0].qlen + q[1].qlen >= cfg->limit_pkts) {
		*why = WHY_OVERFLOW;
		return ACT_DROP;
	}
	if (q[0].backlog + q[1].backlog < cfg->min_backlog)
		r = ~0ULL;  /* a near-empty queue is never punished for its probability */
	if (r < cc->p_drop)
		action = ACT_DROP;
	else if (r < (__u64)cc->p_drop + cc->p_mark)
		action = ACT_MARK;
	else if (cc->step_ns &&
		 wait_ns + (__u64)q[cls & 1].backlog * cfg->ps_per_byte / 1000 > cc->step_ns) {
		action = ACT_MARK;
		*why = WHY_STEP;
	}
	if (action == ACT_MARK && pi->ecn == 0)
		action = ACT_DROP;  /* RFC 3168: a Not-ECT packet is dropped instead */
	return action;
}

static __always_inline void emit(struct stamp *sp, __u64 t_dep, __u16 size, struct pkt_info *pi)
{
	struct global_counts *gc = get_global();
	struct pkt_rec *rec = bpf_ringbuf_reserve(&dq_records, sizeof(*rec), 0);

	if (!rec) {
		if (gc)
			gc->records_lost++;
		return;
	}
	rec->t_arr_ns = sp->t_arr_ns;
	rec->t_dep_ns = t_dep;
	rec->src = pi->src;
	rec->dst = pi->dst;
	rec->sport = pi->sport;
	rec->dport = pi->dport;
	rec->size = size;
	rec->cls = sp->meta & 3;
	rec->ecn_in = (sp->meta >> 2) & 3;
	rec->action = (sp->meta >> 8) & 0xff;
	rec->proto = pi->proto;
	bpf_ringbuf_submit(rec, 0);
	if (gc)
		gc->records++;
}

/* Both leaves as seen now (read without the qdisc lock: a snapshot, good to a packet), and
 * the link's wait (link_wait_ns) at `now`. */
static __always_inline int leaves_now(struct config *cfg, struct __sk_buff *ctx, struct leafq *q,
				      __u64 now, __u64 *wait_ns)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	__u64 root = (__u64)skb->dev->qdisc;
	struct leaf_cache *lc = leaves(cfg, root);

	if (!lc || read_leaf(cfg, lc, 0, &q[0]) < 0 || read_leaf(cfg, lc, 1, &q[1]) < 0)
		return -1;
	*wait_ns = link_wait_ns(lc, now);
	return 0;
}

SEC("tc")
int dualq_egress(struct __sk_buff *skb)
{
	struct config *cfg = get_config();
	struct pkt_info pi = {};
	struct leafq q[2] = {};
	struct cls_counts *st;
	struct stamp sp;
	int why = 0;
	__u32 cls;
	__u8 action = ACT_ENQUEUE, sampled;
	__u64 now = bpf_ktime_get_ns(), wait_ns = 0;

	if (!cfg || parse(skb, &pi) < 0)
		return TC_ACT_OK;  /* not IP (ARP, ...): HTB's default class, no AQM */
	cls = (!cfg->single_queue && (pi.ecn & 1)) ? CLS_L : CLS_C;  /* ECT(1), CE -> L */
	skb->priority = cfg->classid[cls];
	st = get_counts(cls);
	if (!st)
		return TC_ACT_OK;
	st->arrivals++;
	st->arr_bytes += skb->len;
	/* a dropped or marked SYN makes TCP give up ECN for the connection (FACTS pitfall);
	 * without the leaves (shape being rebuilt) there is no queue to act on */
	if (!pi.syn && leaves_now(cfg, skb, q, now, &wait_ns) == 0)
		action = decide(cfg, cls, &pi, q, wait_ns, &why);

	sp.t_arr_ns = now;
	sampled = cfg->sample_every &&
		  (cfg->sample_every == 1 || bpf_get_prandom_u32() % cfg->sample_every == 0);
	sp.meta = META_MAGIC << 24 | (__u32)sampled << 16 | (__u32)action << 8 |
		  (__u32)pi.ecn << 2 | cls;
	if (action == ACT_DROP) {
		st->drops++;
		if (why == WHY_OVERFLOW)
			st->overflows++;
		if (sampled)
			emit(&sp, 0, skb->len, &pi);
		return TC_ACT_SHOT;
	}
	if (action == ACT_MARK) {
		if (pi.ecn != 3)
			bpf_skb_ecn_set_ce(skb);
		st->marks++;
		if (why == WHY_STEP)
			st->step_marks++;
	}
	/* __sk_buff cb[0..4] is qdisc_skb_cb.data: untouched by HTB and fifo until dequeue */
	skb->cb[0] = (__u32)sp.t_arr_ns;
	skb->cb[1] = sp.t_arr_ns >> 32;
	skb->cb[2] = sp.meta;
	return TC_ACT_OK;
}

/* ---- the qdisc tracepoints (global: filter on our device first) */

static __always_inline int ours(struct config *cfg, const struct netdev_queue *txq)
{
	struct net_device *dev = txq->dev;

	return dev && dev->ifindex == cfg->ifindex && dev->nd_net.net->ns.inum == cfg->netns_ino;
}

static __always_inline int read_stamp(struct sk_buff *skb, struct stamp *sp)
{
	struct qdisc_skb_cb *qcb = KPTR(struct qdisc_skb_cb, (__u64)skb->cb);
	__u32 raw[3];

	for (int i = 0; i < 3; i++)
		raw[i] = qcb->data[4 * i] | qcb->data[4 * i + 1] << 8 |
			 qcb->data[4 * i + 2] << 16 | (__u32)qcb->data[4 * i + 3] << 24;
	sp->t_arr_ns = (__u64)raw[1] << 32 | raw[0];
	sp->meta = raw[2];
	return (sp->meta >> 24) == META_MAGIC ? 0 : -1;
}

SEC("tp_btf/qdisc_enqueue")
int BPF_PROG(on_enqueue, struct Qdisc *q, const struct netdev_queue *txq, struct sk_buff *skb)
{
	struct config *cfg = get_config();
	struct leaf_cache *lc;
	struct cls_state *st;
	struct leafq lq;
	struct stamp sp;
	__u32 cls;

	if (!cfg || !skb || !ours(cfg, txq) || read_stamp(skb, &sp) < 0)
		return 0;
	cls = sp.meta & 1;
	lc = leaves(cfg, (__u64)q);
	st = get_state(cls);
	if (!lc || !st)
		return 0;
	lq.qlen = 0;
	publish(cfg, lc, cls, sp.t_arr_ns, &lq);
	if (lq.qlen == 1)  /* under the qdisc lock: this packet started a busy period */
		st->busy_start_ns = sp.t_arr_ns;
	return 0;
}

static __always_inline void parse_kernel(struct sk_buff *skb, struct pkt_info *pi)
{
	unsigned char *nh = skb->head + skb->network_header;
	struct iphdr iph;
	__u16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP) || bpf_probe_read_kernel(&iph, sizeof(iph), nh) < 0)
		return;
	pi->src = bpf_ntohl(iph.saddr);
	pi->dst = bpf_ntohl(iph.daddr);
	pi->proto = iph.protocol;
	if ((iph.protocol == IPPROTO_TCP || iph.protocol == IPPROTO_UDP) &&
	    !(iph.frag_off & bpf_htons(0x1fff)) &&
	    bpf_probe_read_kernel(ports, sizeof(ports), nh + iph.ihl * 4) == 0) {
		pi->sport = bpf_ntohs(ports[0]);
		pi->dport = bpf_ntohs(ports[1]);
	}
}

/* Sojourn of one dequeued packet; returns its class, or -1 if we did not stamp it. */
static __always_inline int sample_dequeue(struct sk_buff *skb, __u64 now)
{
	struct cls_counts *ct;
	struct cls_state *st;
	struct pkt_info pi = {};
	struct stamp sp;
	__u64 soj;

	if (read_stamp(skb, &sp) < 0) {
		struct global_counts *gc = get_global();
		if (gc)
			gc->unstamped_deq++;
		return -1;
	}
	ct = get_counts(sp.meta & 1);
	st = get_state(sp.meta & 1);
	if (!ct || !st)
		return -1;
	soj = now > sp.t_arr_ns ? now - sp.t_arr_ns : 0;
	ct->deq_traced++;
	ct->soj_sum_ns += soj;
	if (soj > st->soj_max_ns)
		st->soj_max_ns = soj;
	st->last_deq_arr_ns = sp.t_arr_ns;
	if ((sp.meta >> 16) & 1) {
		parse_kernel(skb, &pi);
		emit(&sp, now, skb->len, &pi);
	}
	return sp.meta & 1;
}

SEC("tp_btf/qdisc_dequeue")
int BPF_PROG(on_dequeue, struct Qdisc *q, const struct netdev_queue *txq, int packets,
	     struct sk_buff *skb)
{
	struct config *cfg = get_config();
	struct leaf_cache *lc;
	struct leafq lq;
	__u32 seen = 0;  /* bit per class dequeued in this call */
	__u64 now;
	int cls;

	if (!cfg || !ours(cfg, txq))
		return 0;
	now = bpf_ktime_get_ns();
	/* a bulk dequeue hands over a list of `packets` skbs chained by ->next */
	for (int i = 0; i < BULK_MAX && skb; i++) {
		cls = sample_dequeue(skb, now);
		if (cls >= 0)
			seen |= 1u << cls;
		if (i + 1 >= packets)
			break;
		skb = skb->next;
	}
	/* copy the leaves that changed; both on an empty dequeue, the last event of every qdisc
	 * run, so the copy the control loop reads is never stale */
	lc = leaves(cfg, (__u64)q);
	if (!lc)
		return 0;
	if (!seen || (seen & 1))
		publish(cfg, lc, CLS_L, now, &lq);
	if (!seen || (seen & 2))
		publish(cfg, lc, CLS_C, now, &lq);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
