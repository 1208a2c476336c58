"""Datapaths: where a policy's decisions meet packets on the bottleneck router."""
