"""Workers: the expert-parallel MoE engine, EPLB, prefill/decode engines, KV transfer, frontend."""
