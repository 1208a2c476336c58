"""AQM-LLM: a pretrained causal LM fine-tuned with LoRA into an L4S AQM policy.

Files, in reading order:
  reward.py      the one definition of the reward (numpy only; the control loop imports it)
  anchor.py      DualPI2's own p' run beside the model (the anchored head's input; numpy only)
  features.py    QueueState / control-loop rows -> normalised numbers (numpy only)
  fluid.py       a toy fluid queue, only for unit tests and smoke training
  dataset.py     experience pool: run directories -> episodes -> windows of (rtg, state, action)
  encoder.py     numbers -> tokens of the backbone's width
  backbone.py    SmolLM2-135M (or its random-weight twin "smollm2-random", any local HF causal
                 LM, a tiny random Llama) loaded offline
  head.py        L4S-LM head (per-class enqueue/drop/mark) + return and action embeddings
  coupled.py     the coupled head (action: coupled): gate + log10 p' + k, DualPI2's coupling
                 built in, trained in log space (issue 14)
  anchored.py    the anchored head (action: anchored): a correction of at most 10x to the
                 anchor's p', in the coupled head's layout
  model.py       encoder + backbone + head, LoRA, early exit, incremental decoding
  checkpoint.py  safetensors + json on disk; never unpickles
  train.py       return-conditioned offline RL (NetLLM recipe) with accelerate
  policy.py      AqmLlmPolicy ("aqm-llm"): the model in the control loop
  student.py     StudentPolicy ("aqm-llm-student"): a numpy MLP
  distill.py     trains the student on the LLM policy's decisions

Nothing here imports torch at module import time except the files that need it, so the
control loop can import `reward` cheaply.
"""
