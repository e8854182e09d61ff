"""The `bceloss` command: a thin shell over the library (parse, read files, stream, print).

One concern a module, imports in one direction (parser -> eval_command -> cluster ->
stream -> sources; progress and demo are leaves):

    parser        the arguments and which command runs; `main`
    eval_command  `bceloss eval`: opens the sources, evaluates, prints
    sources       reading .npy, .npz, .csv and .parquet files by rows; InputError
    stream        the loss over files chunk by chunk, exact: the CLI's only door into
                  the library's internals
    cluster       the same on a dask.distributed cluster, and the scheduler's address probe
    progress      the progress bar on a terminal
    demo          `bceloss demo`
"""

from bceloss.cli.parser import main

__all__ = ["main"]
