"""snnrun: an experiment runner for spiking neural networks of leaky integrate-and-fire neurons."""

__version__ = "0.1.0"
