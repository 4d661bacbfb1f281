"""Sparse-GIN against a matched LoRA at long contexts: finetune_step.py's step, time and peak memory, at
T = 1024, 2048, 4096, 8192 (batch 1) on a 4-layer SmolLM2-shaped model. Every flag of finetune_step.py applies.

Sparse-GIN's graph is built block by block and never kept whole (src/ginformer/kernels/), so its memory should
stay a constant factor of LoRA's at every length; its time adds the head-summed scores, a T² term beside the
base attention's own.

    python bench/long_context.py                        # about 20 minutes on one CPU thread
    python bench/long_context.py --lengths 1024 2048    # a quick run
"""

from finetune_step import main, parse_args

if __name__ == "__main__":
    main(
        parse_args(
            __doc__,
            lengths=[1024, 2048, 4096, 8192],
            tokens=1,  # batch 1 at every length
            layers=4,
            variants=["lora", "sparse-gin"],
            name="long_context",
        )
    )
