"""vidlada-jax: VidLaDA, a video language model with a masked-diffusion LM, in JAX/Flax.

    import vidlada_jax as vj
    model = vj.from_pretrained(path, dtype=jnp.bfloat16)
    logits = model(input_ids, pixel_values)
"""

from vidlada_jax.checkpoint import save as save_checkpoint
from vidlada_jax.config import LMConfig, ModelConfig, Runtime, TokenIds, VisionConfig, model_config
from vidlada_jax.hf.config import ConfigError
from vidlada_jax.hf.safetensors_io import CheckpointError
from vidlada_jax.loading import from_pretrained, init_model
from vidlada_jax.mars import DualCache, MarsCacheConfig
from vidlada_jax.objective import masked_diffusion_loss
from vidlada_jax.params import count_params
from vidlada_jax.preprocess import preprocess_frames
from vidlada_jax.sampling import FullRecompute, SampleOutput, SamplerConfig, generate
from vidlada_jax.vidlada import VidLaDA

__all__ = [
    'CheckpointError',
    'ConfigError',
    'DualCache',
    'FullRecompute',
    'LMConfig',
    'MarsCacheConfig',
    'ModelConfig',
    'Runtime',
    'SampleOutput',
    'SamplerConfig',
    'TokenIds',
    'VidLaDA',
    'VisionConfig',
    'count_params',
    'from_pretrained',
    'generate',
    'init_model',
    'masked_diffusion_loss',
    'model_config',
    'preprocess_frames',
    'save_checkpoint',
]
