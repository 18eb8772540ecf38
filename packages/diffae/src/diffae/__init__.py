"""diffae: the tools around the diffae model families.

The command line (`diffae`, `python -m diffae`), image files and metrics (`diffae.images`,
`diffae.metrics`, `diffae.visuals`), latent files (`diffae.latents`), choosing and loading a
model of any installed family (`diffae.models`) and Hugging Face code bundles (`diffae.bundle`).
The models themselves live in the runtime packages (`fcdm_diffae`, `dinac_ae`, `m_diffae`,
`capacitor_decoder`, `full_capacitor`) over `diffae_core`; they never import this package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("diffae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = ["__version__"]
