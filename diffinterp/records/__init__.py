"""Records: what the sampler did (:class:`Trajectory`) and what the network computed
(:class:`DenoisingCache`), both indexed by (block, step), with safetensors serialization, atomic
output files and helpers that decode generated tokens. The lowest layer: it imports no other."""
