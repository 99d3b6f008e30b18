from .frfsr import FRFSR, AlignedTextures, Correspondence, Restoration

__all__ = ["FRFSR", "Correspondence", "AlignedTextures", "Restoration"]
