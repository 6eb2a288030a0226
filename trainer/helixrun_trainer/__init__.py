"""helixrun's trainer: config -> components -> loop (see helixrun_trainer.loop)."""

__version__ = "0.1.0"
