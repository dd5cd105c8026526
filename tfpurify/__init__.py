"""tfpurify: GAN- and autoencoder-based defenses against adversarial examples (TF2 / Keras)."""

__version__ = "0.1.0"
