from .frfsr import FRFSR, AlignedTextures, Correspondence, EncodedRefs, Restoration

__all__ = ["FRFSR", "EncodedRefs", "Correspondence", "AlignedTextures", "Restoration"]
