"""Seeing attention as graphs: `attention_graphs` captures the adjacencies a text induces in any model, `plots`
draws every figure of the package in one style."""
