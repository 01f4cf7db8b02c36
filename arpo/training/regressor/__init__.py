"""Fitting the prompt-embedding regressor (`arpo.tools.regressor`): the training loop with its
curriculum and losses, the (image, prompt) readers it trains on, and fitting the DAKL kernel adapter
that `arpo.tools.regressor.kernel_adaptation` applies at prediction time."""
