"""The integer arithmetic of Linux sch_dualpi2 (net/sched/sch_dualpi2.c, 6.17+) and of
tc-dualpi2 (iproute2 tc/q_dualpi2.c), as pure functions. policies/DUALPI2.md lists every
behaviour and which datapath matches it.

The chain a gain goes through, with the defaults (alpha 0.16 Hz, beta 3.2 Hz):

    tc:      a256 = (uint32)(strtof(arg) * 256)          0.16 -> 40 (float32 0.16*256 = 40.96)
             (no alpha on the command line: the kernel's own defaults a256 = 41, b256 = 819)
    kernel:  a_int = (a256 * MAX_PROB >> 2) / 1e9        41 -> 44, 819 -> 879
             units: probability (MAX_PROB = 2^32 - 1 is 1) per 64 ns of delay
    dump:    a256' = (a_int * 1e9 << 2) / MAX_PROB        44 -> 40, 879 -> 818
    tc -s:   printf("%f", a256' / 256.0f)                 0.156250, 3.195312

so tc prints 0.156250 and 3.195312, while the controller applies a_int = 44 and b_int = 879
units, i.e. 44 * 1e9 / 64 / MAX_PROB = 0.160071 Hz and 3.197778 Hz. Both are reported
(`effective_gains`). Every update (calculate_probability()):

    delta = (qdelay - target) * a_int + (qdelay - qdelay_old) * b_int       s64, delays in ns
    prob  = prob + delta / 64 (each sign truncated towards 0), clamped to [0, MAX_PROB]
            by u32 wrap-around checks; without drop_overload also min(prob, MAX_PROB / k)

and per packet the coin is `get_random_u32() <= prob`, true with probability (prob + 1) / 2^32.
"""

from __future__ import annotations

import numpy as np

MAX_PROB = (1 << 32) - 1  # sch_dualpi2: MAX_PROB U32_MAX (probability 1)
ALPHA_BETA_SHIFT = 8  # netlink alpha/beta in 1/256 Hz
ALPHA_BETA_GRANULARITY = 6  # internal alpha/beta per 64 ns of delay
ALPHA_BETA_SCALING = ALPHA_BETA_SHIFT - ALPHA_BETA_GRANULARITY
NSEC_PER_SEC = 1_000_000_000
KERNEL_DEFAULT_A256 = 41  # dualpi2_reset_default(): "~0.16 Hz * 256"
KERNEL_DEFAULT_B256 = 819  # "~3.20 Hz * 256"
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


def tc_alpha_beta(value: float) -> int:
    """What tc sends for `alpha VALUE` given on its command line: parse_alpha_beta() reads a
    C float (strtof) and sends (uint32)(field_f * ALPHA_BETA_SCALE), a float product."""
    return int(np.float32(np.float32(value) * np.float32(256)))


def tc_rtt_alpha_beta(value: float) -> int:
    """What tc sends for an alpha or beta it derived from max_rtt/typical_rtt: the double
    alpha_f times 256, truncated to uint32."""
    return int(value * 256)


def scale_alpha_beta(param256: int) -> int:
    """dualpi2_scale_alpha_beta(): 1/256 Hz -> probability units per 64 ns (u32, truncated)."""
    return ((param256 * MAX_PROB) >> ALPHA_BETA_SCALING) // NSEC_PER_SEC


def unscale_alpha_beta(param: int) -> int:
    """dualpi2_unscale_alpha_beta(), what the kernel dumps back to tc (truncated again)."""
    return ((param * NSEC_PER_SEC) << ALPHA_BETA_SCALING) // MAX_PROB


def tc_printed(param256_dumped: int) -> str:
    """tc's print of a dumped alpha or beta: print_float("%f", (float)x / 256)."""
    return f"{float(np.float32(param256_dumped) / np.float32(256)):f}"


def applied_hz(param: int) -> float:
    """The gain the controller really applies, in Hz (probability per second of delay)."""
    return param * NSEC_PER_SEC / (1 << ALPHA_BETA_GRANULARITY) / MAX_PROB


def _s64(x: int) -> int:
    x &= U64
    return x - (1 << 64) if x >> 63 else x


def calculate_probability(prob: int, qdelay_ns: int, last_qdelay_ns: int, target_ns: int,
                          alpha: int, beta: int, drop_overload: bool, coupling: int) -> int:
    """One update of the base probability, as calculate_probability() does it in integers.

    `prob` and the result are u32 (MAX_PROB = 1); `alpha`, `beta` are the scaled gains."""
    delta = _s64(_s64((qdelay_ns - target_ns) * alpha) + _s64((qdelay_ns - last_qdelay_ns) * beta))
    if delta > 0:
        # __scale_delta(delta) + pi2_prob, stored in a u32: a wrap-around means overflow
        new = ((delta >> ALPHA_BETA_GRANULARITY) + prob) & U32
        if new < prob:
            new = MAX_PROB
    else:
        # pi2_prob - __scale_delta(-delta): a wrap-around means underflow
        new = (prob - ((-delta & U64) >> ALPHA_BETA_GRANULARITY)) & U32
        if new > prob:
            new = 0
    if not drop_overload:  # cap k * prob at 100% so L4S never sees an overload
        return min(new, MAX_PROB // coupling)
    return new


def roll_probability(prob: int) -> float:
    """P(get_random_u32() <= prob): dualpi2_roll() is true (prob + 1) times in 2^32."""
    return min(prob + 1, 1 << 32) / float(1 << 32)
