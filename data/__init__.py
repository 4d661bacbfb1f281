"""The datasets that ship with ginformer, installed as package data (`ginformer.bundled`); each folder holds the
files, SOURCE.md (origin, format, how it maps to the paper) and its LICENSE."""
