"""The run layer: one trainer, one evaluator, one comparison and one generation command for every task (tasks/) and
every model side (a model trained from scratch, or a frozen pretrained model with Sparse-GIN, LoRA or nothing).

    config.py    run configs: YAML + --set overrides -> RunSettings (model, data, training), through settings.py
    models.py    the model side: build, save, load, graph scalars
    train.py     train(settings) on transformers' Trainer, into a run directory
    evaluate.py  evaluate_run: loss, perplexity and the task's metrics beside their baselines
    run_dir.py   runs/<name>/: every file name and format in it
    compare.py   variants x seeds: summary tables and figures
    generate.py  `ginformer generate` on a finished run (generation.py is the loop)
"""
