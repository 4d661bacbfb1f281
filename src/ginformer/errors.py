"""The library's own errors: input a user can fix, each message naming the key, file, row or directory and the fix.

`ginformer` prints a GinformerError as one line (exit status 2; a diverged run: 1). Any other exception is a bug,
in ginformer or in a library it calls, and keeps its traceback. Each type also derives from the built-in a
caller would catch without knowing ginformer (ValueError, FileNotFoundError, ...).

    ConfigError       a config key or value, or a command option: unknown, badly typed, out of range, in conflict
    DataError         a data file, row or column: unreadable, malformed, empty, too long for the model
    CheckpointError   a saved run, checkpoint, model or adapter that cannot be read back: truncated, tampered, changed
    ModelRefused      a base model whose attention or residual stream the adapter cannot reproduce faithfully
    MissingInput      a file or directory the user named is not there
    OutputInTheWay    something already stands where a result would be written
    MissingExtra      an optional dependency (an extra of the package) is not installed
    NotMergeable      an operation that folds an adapter into the base weights (LoRA's merge), which a nonlinear
                      adapter such as Sparse-GIN cannot be
"""


class GinformerError(Exception):
    """Input the message says how to fix."""


class ConfigError(GinformerError, ValueError):
    pass


class DataError(GinformerError, ValueError):
    pass


class CheckpointError(GinformerError, ValueError):
    pass


class ModelRefused(GinformerError, ValueError):
    pass


class MissingInput(GinformerError, FileNotFoundError):
    pass


class OutputInTheWay(GinformerError, FileExistsError):
    pass


class MissingExtra(GinformerError, ModuleNotFoundError):
    pass


class NotMergeable(GinformerError, NotImplementedError):
    # NotImplementedError: what peft's own tuner layers raise from `merge` when a method cannot merge.
    pass
