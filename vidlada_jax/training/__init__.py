"""Training VidLaDA's curriculum: the optimizer, the jitted train step and the loop around it.

    from vidlada_jax.training import Trainer
    Trainer(config, workdir).run()          # what `python -m vidlada_jax.launch.train` does

See `trainer.py` for the work-directory layout and `configs/` for the job configs.
"""

from vidlada_jax.training.optimizer import OptimizerConfig, make_optimizer
from vidlada_jax.training.trainer import (CheckpointConfig, NonFiniteLoss, TrainConfig, Trainer)
from vidlada_jax.training.train_step import TrainState, train_step

__all__ = ['CheckpointConfig', 'NonFiniteLoss', 'OptimizerConfig', 'TrainConfig', 'TrainState',
           'Trainer', 'make_optimizer', 'train_step']
