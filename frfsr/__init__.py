"""frfsr: reference-based 4x image super-resolution (FRFSR)."""
from .config import FRFSRConfig
from .models import FRFSR, AlignedTextures, Correspondence, EncodedRefs, RefViews, Restoration

__version__ = "0.1.0"


def __getattr__(name):
    # the pipeline pulls in image I/O and the Hub client: import it on first use
    if name == "FRFSRPipeline":
        from .pipeline import FRFSRPipeline
        return FRFSRPipeline
    raise AttributeError(f"module 'frfsr' has no attribute {name!r}")


__all__ = ["FRFSR", "FRFSRConfig", "FRFSRPipeline", "RefViews", "EncodedRefs", "Correspondence", "AlignedTextures", "Restoration"]
