// SPDX-License-Identifier: GPL-2.0
/* tc clsact egress, on an L4S sender's interface: rewrite ECT(0) to ECT(1) on the IPv4
 * packets of the sockets that carry the L4S mark bit (SO_MARK), fixing the header checksum.
 *
 * Needed because the kernel sends ECT(0) for every ECN-capable TCP socket and a socket
 * cannot choose the codepoint (IP_TOS masks the ECN bits on TCP sockets); TCP Prague sets
 * ECT(1) in-kernel, a BPF congestion control cannot. Packets without the mark, Not-ECT and CE
 * packets pass untouched. IPv6 is not rewritten (the testbed is IPv4).
 *
 * Returns TC_ACT_UNSPEC so that any later filter on the same hook still runs.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ECT1_MARK
#define ECT1_MARK 0x200
#endif
#define TC_ACT_UNSPEC (-1)
#define ETH_P_IP 0x0800
#define ETH_HLEN 14
#define ECN_MASK 0x3
#define ECT0 0x2
#define ECT1 0x1

char _license[] SEC("license") = "GPL";

SEC("tc")
int ect1_rewrite(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *iph = data + ETH_HLEN;
	__u16 old_word, new_word;
	__u8 tos;

	if (!(skb->mark & ECT1_MARK) || skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if ((void *)(iph + 1) > data_end)
		return TC_ACT_UNSPEC;
	tos = iph->tos;
	if ((tos & ECN_MASK) != ECT0)
		return TC_ACT_UNSPEC;
	/* the checksum covers 16-bit words: version/IHL byte and ToS byte form the first one */
	old_word = *(__u16 *)iph;
	tos = (tos & ~ECN_MASK) | ECT1;
	bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, tos), &tos, 1, 0);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	iph = data + ETH_HLEN;
	if ((void *)(iph + 1) > data_end)
		return TC_ACT_UNSPEC;
	new_word = *(__u16 *)iph;
	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_word, new_word, 2);
	return TC_ACT_UNSPEC;
}
