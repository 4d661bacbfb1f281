"""The run layer: one trainer, one evaluator, one comparison and one generation loop for every task (tasks/) and
every model side (a model trained from scratch, or a frozen pretrained model with Sparse-GIN, LoRA or nothing).

    settings.py  typed settings: fields checked against their annotations, errors that name the key
    config.py    run configs: YAML + --set overrides -> RunSettings (model, data, training)
    models.py    the model side: build, save, load, graph scalars
    train.py     train(settings) on transformers' Trainer, into a run directory
    evaluate.py  evaluate_run: loss, perplexity and the task's metrics beside their baselines
    compare.py   variants x seeds: summary tables and figures
    generate.py  the one generation loop
"""
