"""Device-mesh layouts: how the model's logical axis names map onto the (data, fsdp, tensor) mesh.

The modules only speak logical names (`embed`, `heads`, `mlp`, `vocab`, `vision_embed`, ...);
`vidlada_jax.sharding` turns them into `PartitionSpec`s with one of these rule sets. Switching
between FSDP-only and FSDP + tensor parallelism is a change of config, never of model code.

    get_config("fsdp")                 all devices on `fsdp`
    get_config("fsdp_tp:tensor=2")     2-way tensor parallelism, the remaining devices on `fsdp`
    get_config("fsdp_tp:data=2,tensor=4")
"""

import ml_collections

MESH_AXES = ('data', 'fsdp', 'tensor')

# Axes every rule set leaves whole (the last two name cache and activation dimensions: the
# sequence, and the model width of cached hidden states).
_REPLICATED = (
    ('layers', None),
    ('head_dim', None),
    ('norm', None),
    ('vision_positions', None),
    ('cache_length', None),
    ('activation_embed', None),
)

RULES = {
    # ZeRO-3 style: every large matrix is split along its model-width dimension.
    'fsdp': (
        ('batch', ('data', 'fsdp')),
        ('embed', 'fsdp'),
        ('vision_embed', 'fsdp'),
        ('vocab', None),
        ('heads', None),
        ('kv_heads', None),
        ('mlp', None),
        ('vision_heads', None),
        ('vision_mlp', None),
    ) + _REPLICATED,
    # Megatron-style tensor parallelism (heads, MLP width, vocabulary) on top of FSDP.
    'fsdp_tp': (
        ('batch', ('data', 'fsdp')),
        ('embed', 'fsdp'),
        ('vision_embed', 'fsdp'),
        ('vocab', 'tensor'),
        ('heads', 'tensor'),
        ('kv_heads', 'tensor'),
        ('mlp', 'tensor'),
        ('vision_heads', 'tensor'),
        ('vision_mlp', 'tensor'),
    ) + _REPLICATED,
}

_DEFAULT_SHAPES = {
    'fsdp': dict(data=1, fsdp=-1, tensor=1),
    'fsdp_tp': dict(data=1, fsdp=-1, tensor=2),
}


def get_config(arg: str = 'fsdp') -> ml_collections.ConfigDict:
  """`arg` is a rule-set name, optionally followed by `:axis=size,...` (-1 = the remaining devices)."""
  name, _, sizes = arg.partition(':')
  if name not in RULES:
    raise ValueError(f'unknown mesh rule set {name!r}; known: {", ".join(RULES)}')
  shape = dict(_DEFAULT_SHAPES[name])
  for item in filter(None, sizes.split(',')):
    axis, _, size = item.partition('=')
    if axis not in MESH_AXES:
      raise ValueError(f'unknown mesh axis {axis!r} in {arg!r}; axes are {MESH_AXES}')
    shape[axis] = int(size)
  return ml_collections.ConfigDict(dict(name=name, shape=shape, rules=RULES[name]))
