"""jaxcryo: semi-amortized ab-initio cryo-EM reconstruction (CryoSPIN) in JAX/Flax."""

__version__ = "0.1.0"
