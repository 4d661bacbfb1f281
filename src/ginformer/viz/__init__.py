"""Seeing attention as graphs: `attention_graphs` captures the adjacencies a text induces in any model and
`graph_figures` draws them; `run_figures` draws training runs and comparisons, both in the style of `style`."""
