"""Near two-fold-symmetric phantom (the paper's HSP difficulty) at quickstart size: two identical
subunits related by a two-fold, told apart only by a small domain on one of them.

Compare --config.model.n_heads=1 with the default 7, and --config.train.switch=auto with 'fixed'."""

from experiments import quickstart


def get_config():
    config = quickstart.get_config()
    config.simulate.volume = "dimer_phantom"
    return config
