"""Commands: the jobs as plain functions (train, eval, predict, preprocess, tune) and the CLI over them."""
