// SPDX-License-Identifier: GPL-2.0
/* A minimal marking bottleneck for the workloads' own tests, not a datapath: on the router's
 * shaped egress (tc clsact egress, before the qdisc), CE-mark every ECN-capable IPv4 packet
 * that arrives while the root qdisc holds more than THRESH_BYTES (a step AQM on backlog, like
 * DualPI2's L4S step at about 1 ms). Not-ECT packets pass; the FIFO tail-drops them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef THRESH_BYTES
#define THRESH_BYTES 6250 /* 1 ms at 50 Mbit/s */
#endif
#define TC_ACT_UNSPEC (-1)
#define ETH_P_IP 0x0800

char _license[] SEC("license") = "GPL";

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

SEC("tc")
int step_marker(struct __sk_buff *skb)
{
	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);
	struct Qdisc *q;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	q = kskb->dev->qdisc;
	if (q && q->qstats.backlog > THRESH_BYTES)
		bpf_skb_ecn_set_ce(skb); /* no-op for Not-ECT packets */
	return TC_ACT_UNSPEC;
}
