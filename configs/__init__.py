"""The run and compare configs that ship with ginformer, installed as package data (`ginformer.configs`), so that
`--config NAME.yaml` finds them outside a checkout."""
