"""Bridges to the tools researchers already use: lm-evaluation-harness (`lm_eval`). Transformers' Trainer and TRL's
SFTTrainer need no bridge: a Sparse-GIN model trains under them unchanged (see docs/integrations.md)."""
