"""The training machinery: a run's setup (`run.py`, `config_checks.py`, `pose.py`), the
pmapped train step (`train.py`), the loop that drives it (`train_loop.py`), optimiser
(`optim.py`), checkpoints (`checkpointing.py`), the divergence guard, the progress count and
the metrics log."""
