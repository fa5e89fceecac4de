"""Case studies: one module per phenomenon, each with ``run(model, ..., out_dir) -> metrics``."""
