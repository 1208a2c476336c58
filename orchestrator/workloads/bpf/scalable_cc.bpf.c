// SPDX-License-Identifier: GPL-2.0
/* A scalable (DCTCP-style) TCP congestion control as a BPF struct_ops, for kernels without
 * TCP Prague. It is what the testbed's L4S sender uses.
 *
 * Response to CE marks: alpha, an EWMA (gain 1/16) of the fraction of delivered packets
 * that were CE-marked, is updated once per RTT; when the ACKs echo CE, the kernel enters CWR
 * (at most once per RTT) and asks ssthresh(), which cuts cwnd by alpha/2. Losses halve cwnd
 * as Reno does. Growth is Reno's (slow start, then one segment per RTT).
 *
 * Data packets leave with ECT(0): the kernel picks the codepoint, and a TCP socket cannot
 * choose it (IP_TOS masks the ECN bits). ect1_rewrite.bpf.c, on the sender's egress,
 * rewrites them to ECT(1).
 *
 * Build-time parameters (see orchestrator/workloads/bpfbuild.py):
 *   CC_NAME   the congestion control's name and the struct_ops map's name (max 15 chars),
 *             unique per testbed so that `bpftool struct_ops unregister name` hits only ours;
 *   CC_FLAGS  TCP_CONG_* flags: NEEDS_ECN (0x2), plus NEEDS_ACCECN (0x4) where the kernel
 *             accepts it, so that AccECN is negotiated on connections using this CC;
 *   PRAGUE    which of TCP Prague's differences from DCTCP to apply (net/ipv4/tcp_prague.c of
 *             the L4S team), a bit each (orchestrator/workloads/prague.py names them):
 *     0x1 RTT independence (Prague's RTT_CONTROL_RATE): once out of slow start and past
 *         RTT_TRANSITION rounds, a flow whose RTT is below RTT_TARGET_US (25 ms) grows by
 *         (rtt / target)^2 segments per RTT instead of one, i.e. its rate grows as a flow's at
 *         the target RTT would; and it updates alpha and reduces on CE at most once per target
 *         RTT, so flows of different RTTs converge to the same alpha;
 *     0x2 pacing: the kernel's internal pacing (SK_PACING_NEEDED) at 200% of cwnd/srtt in slow
 *         start and pacing_ca_ratio (the testbed sets 100%, Prague's) after, which is Prague's
 *         own formula; without it the sender is ACK-clocked and sends bursts;
 *     0x4 windows down to one segment, the reduction rounded to nearest as Prague does (its
 *         successors go below one through pacing; a BPF CC cannot: the kernel recomputes the
 *         pacing rate after cong_avoid);
 *     0x8 classic ECN bottleneck detection, a simplified form of prague_classic_ecn_detection()
 *         (which needs srtt_pace_us/classic_ecn fields on tcp_sock that only the L4S team's
 *         kernel has): once per round in which CE came back, a score goes up by one if the
 *         smoothed RTT stands more than CLASSIC_DEPTH_US (Prague's D0, 2 ms) above the minimum
 *         RTT, down by one if not, within 0..CLASSIC_STICKY. An L4S AQM keeps that standing
 *         queue near zero; a classic ECN AQM (PIE, RED, CoDel, which mark ECT(1) as ECT(0))
 *         holds it at its target. While the score is at least CLASSIC_SCORE_ON, each reduction
 *         uses max(alpha, 0.6), Prague's classic fallback (prague_classic_ecn_fallback()), so
 *         the flow backs off about as a classic flow does on a mark.
 *     0x10 additive increase during CWR (Prague's "additive increase uses unsaturated
 *         marking": it updates cwnd on every ACK whatever the congestion state). The kernel
 *         calls cong_avoid only outside CWR and, during it, drives cwnd towards ssthresh
 *         (PRR); so each unmarked ACKed segment during CWR adds 1/ssthresh of a segment to
 *         ssthresh itself (the same scaling as cong_avoid), which cwnd reaches when CWR ends.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#ifndef CC_NAME
#define CC_NAME l4s_scalable
#endif
#ifndef CC_FLAGS
#define CC_FLAGS 0x2
#endif
#ifndef PRAGUE
#define PRAGUE 0x2 /* pacing only: the sender before the Prague options existed */
#endif
#define OPT_RTT_INDEP 0x1
#define OPT_PACING 0x2
#define OPT_LOW_CWND 0x4
#define OPT_CLASSIC_DETECT 0x8
#define OPT_AI_IN_CWR 0x10
#define CLASSIC_DEPTH_US 2000U
#define CLASSIC_STICKY 16U
#define CLASSIC_SCORE_ON 8U
#define CLASSIC_ALPHA 614U /* 0.6 * MAX_ALPHA: c * ~0.6 in prague_classic_ecn_fallback() */
#ifndef RTT_TARGET_US
#define RTT_TARGET_US 25000ULL /* prague_rtt_target */
#endif
#ifndef RTT_TRANSITION
#define RTT_TRANSITION 500 /* prague_rtt_transition: post-slow-start rounds */
#endif
#define MIN_CWND ((PRAGUE & OPT_LOW_CWND) ? 1U : 2U)
#define STR2(x) #x
#define STR(x) STR2(x)

char _license[] SEC("license") = "GPL";

#define MAX_ALPHA 1024U
#define SHIFT_G 4 /* EWMA gain g = 1/16, as DCTCP */
#define ECN_MODE_ACCECN 0x10 /* tp->ecn_flags bit when AccECN was negotiated (6.18) */
#define ECN_DEMAND_CWR 0x4
#define ICSK_ACK_TIMER 2
#define ICSK_ACK_NOW 8

extern void tcp_reno_cong_avoid(struct sock *sk, __u32 ack, __u32 acked) __ksym;
extern void tcp_cong_avoid_ai(struct tcp_sock *tp, __u32 w, __u32 acked) __ksym;

struct scalable {
	__u32 old_delivered;
	__u32 old_delivered_ce;
	__u32 prior_rcv_nxt;
	__u32 alpha;
	__u32 next_seq;
	__u32 ce_state;
	__u32 loss_cwnd;
	__u32 round; /* rounds since slow start ended */
	__u32 classic_score; /* classic ECN bottleneck evidence, 0..CLASSIC_STICKY */
	__u32 cwr_delivered; /* tp->delivered - delivered_ce at the previous ACK */
	__u32 cwr_acc; /* unmarked segments ACKed in CWR since ssthresh last grew */
	__u64 alpha_stamp; /* tcp_mstamp (us) of the last alpha update */
	__u64 cwr_stamp; /* ... and of the last reduction on CE */
};

static __always_inline struct scalable *ca_of(struct sock *sk)
{
	return (struct scalable *)((struct inet_connection_sock *)sk)->icsk_ca_priv;
}

static __always_inline struct tcp_sock *tp_of(struct sock *sk)
{
	return (struct tcp_sock *)sk;
}

static __always_inline bool in_slow_start(const struct tcp_sock *tp)
{
	return tp->snd_cwnd < tp->snd_ssthresh;
}

static __always_inline void new_round(const struct tcp_sock *tp, struct scalable *ca)
{
	ca->next_seq = tp->snd_nxt;
	ca->old_delivered = tp->delivered;
	ca->old_delivered_ce = tp->delivered_ce;
	if (!in_slow_start(tp) && ca->round < RTT_TRANSITION)
		ca->round++;
}

/* prague_is_rtt_indep() */
static __always_inline bool rtt_indep(const struct tcp_sock *tp, const struct scalable *ca)
{
	return (PRAGUE & OPT_RTT_INDEP) && !in_slow_start(tp) && ca->round >= RTT_TRANSITION;
}

SEC("struct_ops/scalable_init")
void BPF_PROG(scalable_init, struct sock *sk)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);

	ca->prior_rcv_nxt = tp->rcv_nxt;
	ca->alpha = MAX_ALPHA; /* first reduction halves, as DCTCP's default */
	ca->loss_cwnd = 0;
	ca->ce_state = 0;
	ca->round = 0;
	ca->classic_score = 0;
	ca->cwr_delivered = tp->delivered - tp->delivered_ce;
	ca->cwr_acc = 0;
	ca->alpha_stamp = tp->tcp_mstamp;
	ca->cwr_stamp = 0;
	new_round(tp, ca);
	/* Pace, as TCP Prague does: with a shallow marking threshold, ACK-clocked bursts
	 * would be marked however short the standing queue. Without the fq qdisc, TCP paces
	 * itself (internal pacing at 2x/1.2x cwnd/srtt). */
	if (PRAGUE & OPT_PACING)
		sk->sk_pacing_status = SK_PACING_NEEDED;
}

SEC("struct_ops/scalable_ssthresh")
__u32 BPF_PROG(scalable_ssthresh, struct sock *sk)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);
	__u32 cwnd = tp->snd_cwnd;
	/* cwnd * alpha / 2, truncated; with windows down to one segment rounded to nearest as
	 * prague_enter_cwr() does ("unbias the rounding"), else a window of 2 never comes down
	 * (2 * alpha / 2 < 1 for any alpha < 1) */
	__u32 alpha = ca->alpha;
	__u32 cut;

	if ((PRAGUE & OPT_CLASSIC_DETECT) && ca->classic_score >= CLASSIC_SCORE_ON && alpha < CLASSIC_ALPHA)
		alpha = CLASSIC_ALPHA;
	cut = (cwnd * alpha + ((PRAGUE & OPT_LOW_CWND) ? MAX_ALPHA : 0)) >> 11;

	/* prague_enter_cwr(): RTT-independent flows reduce at most once per target RTT */
	if (rtt_indep(tp, ca) && tp->tcp_mstamp - ca->cwr_stamp < RTT_TARGET_US)
		return cwnd;
	ca->cwr_stamp = tp->tcp_mstamp;
	ca->loss_cwnd = cwnd;
	return cwnd - cut > MIN_CWND ? cwnd - cut : MIN_CWND;
}

/* The standing queue a CE-marking bottleneck keeps: deep (a classic ECN AQM) or not (L4S). */
static __always_inline void classic_detect(const struct tcp_sock *tp, struct scalable *ca)
{
	__u32 srtt = tp->srtt_us >> 3, min_rtt = tp->rtt_min.s[0].v;

	if (!srtt || min_rtt == ~0U)
		return;
	if (srtt > min_rtt + CLASSIC_DEPTH_US) {
		if (ca->classic_score < CLASSIC_STICKY)
			ca->classic_score++;
	} else if (ca->classic_score) {
		ca->classic_score--;
	}
}

/* One segment of growth per `w` unmarked segments ACKed while in CWR, into ssthresh. */
static __always_inline void grow_in_cwr(struct sock *sk, struct tcp_sock *tp, struct scalable *ca)
{
	__u32 unmarked = tp->delivered - tp->delivered_ce;
	__u32 acked = unmarked - ca->cwr_delivered;
	__u64 w = tp->snd_ssthresh, rtt = tp->srtt_us >> 3;

	ca->cwr_delivered = unmarked;
	if (((struct inet_connection_sock *)sk)->icsk_ca_state != TCP_CA_CWR || !acked || !w)
		return;
	if (rtt_indep(tp, ca) && rtt && rtt < RTT_TARGET_US) /* as cong_avoid scales it */
		w = w * RTT_TARGET_US * RTT_TARGET_US / (rtt * rtt);
	ca->cwr_acc += acked;
	if (ca->cwr_acc >= w) {
		ca->cwr_acc = 0;
		if (tp->snd_ssthresh < tp->snd_cwnd_clamp)
			tp->snd_ssthresh++;
	}
}

/* Once per RTT: alpha = (1 - g) * alpha + g * (CE-marked / delivered). */
SEC("struct_ops/scalable_in_ack_event")
void BPF_PROG(scalable_in_ack_event, struct sock *sk, __u32 flags)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);
	__u32 alpha, marked, delivered, step;

	if (PRAGUE & OPT_AI_IN_CWR)
		grow_in_cwr(sk, tp, ca);
	if ((__s32)(tp->snd_una - ca->next_seq) < 0)
		return;
	/* prague_should_update_ewma(): and at least a target RTT apart once RTT-independent */
	if (rtt_indep(tp, ca) && tp->tcp_mstamp - ca->alpha_stamp < RTT_TARGET_US)
		return;
	ca->alpha_stamp = tp->tcp_mstamp;
	marked = tp->delivered_ce - ca->old_delivered_ce;
	if ((PRAGUE & OPT_CLASSIC_DETECT) && marked)
		classic_detect(tp, ca);
	alpha = ca->alpha;
	step = alpha >> SHIFT_G;
	alpha -= (step == 0 && alpha > 0) ? alpha : step; /* min_not_zero, as DCTCP */
	if (marked) {
		delivered = tp->delivered - ca->old_delivered;
		if (delivered == 0)
			delivered = 1;
		marked = (marked << (10 - SHIFT_G)) / delivered;
		alpha = alpha + marked < MAX_ALPHA ? alpha + marked : MAX_ALPHA;
	}
	ca->alpha = alpha;
	new_round(tp, ca);
}

static __always_inline void react_to_loss(struct sock *sk)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);

	ca->loss_cwnd = tp->snd_cwnd;
	tp->snd_ssthresh = tp->snd_cwnd >> 1 > MIN_CWND ? tp->snd_cwnd >> 1 : MIN_CWND;
}

SEC("struct_ops/scalable_set_state")
void BPF_PROG(scalable_set_state, struct sock *sk, __u8 new_state)
{
	/* ssthresh() cut by alpha/2 already; a loss halves instead (RTOs come as CA_EVENT_LOSS). */
	if (new_state == TCP_CA_Recovery)
		react_to_loss(sk);
}

/* Receiver side, classic (RFC 3168) feedback only: echo each CE change at once, so that the
 * sender can count marked bytes (DCTCP's receiver). With AccECN the ACE field does that. */
static __always_inline void echo_ce_change(struct sock *sk, __u32 new_state)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);
	struct inet_connection_sock *icsk = (struct inet_connection_sock *)sk;

	if (tp->ecn_flags & ECN_MODE_ACCECN)
		return;
	if (ca->ce_state != new_state) {
		if (icsk->icsk_ack.pending & ICSK_ACK_TIMER) {
			/* send the delayed ACK first, carrying the previous CE state */
			if (ca->ce_state)
				tp->ecn_flags |= ECN_DEMAND_CWR;
			else
				tp->ecn_flags &= ~ECN_DEMAND_CWR;
			bpf_tcp_send_ack(sk, ca->prior_rcv_nxt);
		}
		icsk->icsk_ack.pending |= ICSK_ACK_NOW;
	}
	ca->prior_rcv_nxt = tp->rcv_nxt;
	ca->ce_state = new_state;
	if (new_state)
		tp->ecn_flags |= ECN_DEMAND_CWR;
	else
		tp->ecn_flags &= ~ECN_DEMAND_CWR;
}

SEC("struct_ops/scalable_cwnd_event")
void BPF_PROG(scalable_cwnd_event, struct sock *sk, enum tcp_ca_event ev)
{
	if (ev == CA_EVENT_ECN_IS_CE)
		echo_ce_change(sk, 1);
	else if (ev == CA_EVENT_ECN_NO_CE)
		echo_ce_change(sk, 0);
	else if (ev == CA_EVENT_LOSS)
		react_to_loss(sk);
}

SEC("struct_ops/scalable_cong_avoid")
void BPF_PROG(scalable_cong_avoid, struct sock *sk, __u32 ack, __u32 acked)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);
	__u64 rtt = tp->srtt_us >> 3, w;

	if (!rtt_indep(tp, ca) || !rtt || rtt >= RTT_TARGET_US || !tp->is_cwnd_limited) {
		tcp_reno_cong_avoid(sk, ack, acked);
		return;
	}
	/* prague_rate_scaled_ai_ack_increase(): one segment per cwnd * (target / rtt)^2 ACKed,
	 * i.e. (rtt / target)^2 segments per RTT: the rate then grows by one segment per target
	 * RTT per target RTT, whatever this flow's RTT */
	w = (__u64)tp->snd_cwnd * RTT_TARGET_US * RTT_TARGET_US / (rtt * rtt);
	tcp_cong_avoid_ai(tp, w < 0xffffffffULL ? (__u32)w : 0xffffffffU, acked);
}

SEC("struct_ops/scalable_undo_cwnd")
__u32 BPF_PROG(scalable_undo_cwnd, struct sock *sk)
{
	struct tcp_sock *tp = tp_of(sk);
	struct scalable *ca = ca_of(sk);

	return tp->snd_cwnd > ca->loss_cwnd ? tp->snd_cwnd : ca->loss_cwnd;
}

SEC(".struct_ops")
struct tcp_congestion_ops CC_NAME = {
	.init = (void *)scalable_init,
	.in_ack_event = (void *)scalable_in_ack_event,
	.cwnd_event = (void *)scalable_cwnd_event,
	.ssthresh = (void *)scalable_ssthresh,
	.cong_avoid = (void *)scalable_cong_avoid,
	.undo_cwnd = (void *)scalable_undo_cwnd,
	.set_state = (void *)scalable_set_state,
	.flags = CC_FLAGS,
	.name = STR(CC_NAME),
};
